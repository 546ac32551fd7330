// PublicKeyCredential options and results between the JSON the API speaks (base64url) and
// the ArrayBuffers the browser wants. Native parse/toJSON where the browser has them.

type Json = Record<string, unknown>;

function b64urlToBuf(s: string): ArrayBuffer {
  const pad = "=".repeat((4 - (s.length % 4)) % 4);
  const bin = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function bufToB64url(buf: ArrayBuffer): string {
  let bin = "";
  for (const b of new Uint8Array(buf)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function creationOptions(o: Json): PublicKeyCredentialCreationOptions {
  const user = o.user as Json;
  return {
    ...(o as object),
    challenge: b64urlToBuf(o.challenge as string),
    user: { ...(user as object), id: b64urlToBuf(user.id as string) } as PublicKeyCredentialUserEntity,
    excludeCredentials: ((o.excludeCredentials as Json[] | undefined) ?? []).map((c) => ({
      ...(c as object), id: b64urlToBuf(c.id as string),
    })) as PublicKeyCredentialDescriptor[],
  } as PublicKeyCredentialCreationOptions;
}

function requestOptions(o: Json): PublicKeyCredentialRequestOptions {
  return {
    ...(o as object),
    challenge: b64urlToBuf(o.challenge as string),
    allowCredentials: ((o.allowCredentials as Json[] | undefined) ?? []).map((c) => ({
      ...(c as object), id: b64urlToBuf(c.id as string),
    })) as PublicKeyCredentialDescriptor[],
  } as PublicKeyCredentialRequestOptions;
}

function credentialJson(cred: PublicKeyCredential): Json {
  const r = cred.response as AuthenticatorAttestationResponse & AuthenticatorAssertionResponse;
  const response: Json = { clientDataJSON: bufToB64url(r.clientDataJSON) };
  if ("attestationObject" in r && r.attestationObject) {
    response.attestationObject = bufToB64url(r.attestationObject);
    response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
  } else {
    response.authenticatorData = bufToB64url(r.authenticatorData);
    response.signature = bufToB64url(r.signature);
    response.userHandle = r.userHandle ? bufToB64url(r.userHandle) : null;
  }
  return {
    id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type, response,
    authenticatorAttachment: cred.authenticatorAttachment, clientExtensionResults: cred.getClientExtensionResults(),
  };
}

export function supported(): boolean {
  return typeof window.PublicKeyCredential === "function" && !!navigator.credentials;
}

export async function create(options: Json): Promise<Json> {
  const cred = (await navigator.credentials.create({ publicKey: creationOptions(options) })) as PublicKeyCredential | null;
  if (!cred) throw new Error("No passkey was created.");
  return credentialJson(cred);
}

export async function get(options: Json): Promise<Json> {
  const cred = (await navigator.credentials.get({ publicKey: requestOptions(options) })) as PublicKeyCredential | null;
  if (!cred) throw new Error("No passkey was used.");
  return credentialJson(cred);
}
