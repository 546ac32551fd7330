// The one way the console talks to Custos: the same JSON API as every client, with the access
// token in memory only and the refresh token in an HttpOnly cookie the script never sees.

export interface ProblemBody {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  errors?: { location?: (string | number)[]; message?: string }[];
  request_id?: string;
}

export class Problem extends Error {
  constructor(readonly status: number, readonly body: ProblemBody) {
    super(body.title ?? `HTTP ${status}`);
  }
  get title(): string {
    return this.body.title ?? `Request failed (${this.status})`;
  }
  get detail(): string {
    const errors = (this.body.errors ?? []).map((e) => `${(e.location ?? []).join(".")}: ${e.message ?? ""}`);
    return [this.body.detail ?? "", ...errors].filter(Boolean).join("; ");
  }
}

/** The session ended under a page's feet: the sign-in page is already showing. */
export class SignedOut extends Error {}

export interface Tokens {
  access_token: string;
  expires_in: number;
  session_id: string;
  mfa_enrolment_required?: boolean | null;
}

let accessToken: string | null = null;
let onSignedOut: (why: string) => void = () => undefined;

export function setSignedOutHandler(fn: (why: string) => void): void {
  onSignedOut = fn;
}

export function signedIn(): boolean {
  return accessToken !== null;
}

export function useTokens(tokens: Tokens): void {
  accessToken = tokens.access_token;
}

export function forget(): void {
  accessToken = null;
}

// Sent with every request: it asks token endpoints to put the refresh token in the cookie,
// and it is what refresh and logout require before they read the cookie (CSRF: a cross-site
// page cannot add a custom header without a preflight that Custos does not allow).
const CONSOLE_HEADERS = { "X-Custos-CSRF": "1" };

async function send(method: string, path: string, body?: unknown): Promise<Response> {
  const headers: Record<string, string> = { ...CONSOLE_HEADERS, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  return fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin", cache: "no-store", redirect: "error",
  });
}

async function problemOf(res: Response): Promise<Problem> {
  let body: ProblemBody = {};
  try {
    body = (await res.json()) as ProblemBody;
  } catch {
    body = { title: `The server answered ${res.status}` };
  }
  return new Problem(res.status, body);
}

/** Trade the refresh cookie for a new access token; false when there is no live session. */
export async function refresh(): Promise<boolean> {
  const res = await send("POST", "/api/auth/refresh", {});
  if (!res.ok) {
    accessToken = null;
    return false;
  }
  useTokens((await res.json()) as Tokens);
  return true;
}

export async function raw(method: string, path: string, body?: unknown): Promise<Response> {
  let res = await send(method, path, body);
  if (res.status === 401 && accessToken) {
    if (await refresh()) res = await send(method, path, body);
    else {
      onSignedOut("Your session has ended. Sign in again.");
      throw new SignedOut((await problemOf(res)).title);
    }
  }
  if (!res.ok) throw await problemOf(res);
  return res;
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await raw(method, path, body);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const get = <T>(path: string): Promise<T> => api<T>("GET", path);
export const post = <T>(path: string, body: unknown = {}): Promise<T> => api<T>("POST", path, body);

export async function logout(): Promise<void> {
  try {
    if (accessToken) await send("POST", "/api/auth/logout");
  } finally {
    accessToken = null;
  }
}

export function qs(params: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

let described: Promise<Set<string>> | null = null;

/** The paths the OpenAPI document describes: a page offers a feature only when its endpoint exists. */
export function describedPaths(): Promise<Set<string>> {
  described ??= fetch("/api/openapi.json", { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : { paths: {} }))
    .then((doc: { paths?: Record<string, unknown> }) => new Set(Object.keys(doc.paths ?? {})))
    .catch(() => new Set<string>());
  return described;
}
