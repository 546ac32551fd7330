// A real OpenID Provider for the OIDC tests: the certified npm `oidc-provider` (pinned in
// package.json) on a loopback port, with dynamic client registration (each test registers its
// own client), a non-interactive login of whichever account the test last posted to
// /test/account, consent granted automatically, and /test/mutate to make the token endpoint
// hand back an altered ID token (tampered signature, alg none, another audience, another nonce,
// a key the JWKS does not publish, a rotated key it then publishes) the way a hostile or broken
// provider would. Usage: node oidc_op.mjs PORT (prints "ready <issuer>" when listening).
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;

async function signingKey(alg, kid) {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true });
  const priv = { ...(await jose.exportJWK(privateKey)), kid, alg, use: 'sig' };
  const pub = { ...(await jose.exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { privateKey, priv, pub, alg, kid };
}

const main = await signingKey('RS256', 'main');
const rotated = await signingKey('ES256', 'rotated');
const unpublished = await signingKey('RS256', 'unpublished');

let account = { sub: 'alice', email: 'alice@example.test', email_verified: true, name: 'Alice', amr: ['pwd'] };
let mutation = null;
let publishRotated = false;

const provider = new Provider(issuer, {
  jwks: { keys: [main.priv] },
  cookies: { keys: ['oidc-op-test-only'] },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
  },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub', 'tid', 'hd', 'groups', 'amr'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => {
      const { amr, ...claims } = account;
      return { ...claims, sub };
    },
  }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
});

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

async function resign(idToken, key, changes) {
  const payload = { ...jose.decodeJwt(idToken), ...changes };
  return new jose.SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' }).sign(key.privateKey);
}

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

async function mutate(idToken) {
  const [header, payload, signature] = idToken.split('.');
  switch (mutation?.kind) {
    case 'flip_signature': {
      const bytes = Buffer.from(signature, 'base64url');
      bytes[bytes.length >> 1] ^= 0x01;
      return `${header}.${payload}.${bytes.toString('base64url')}`;
    }
    case 'alg_none':
      return `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`;
    case 'hs256_public_key':
      return new jose.SignJWT(jose.decodeJwt(idToken)).setProtectedHeader({ alg: 'HS256', kid: main.kid })
        .sign(new TextEncoder().encode(JSON.stringify(main.pub)));
    case 'claims':
      return resign(idToken, main, mutation.claims);
    case 'rotated_key':
      publishRotated = true;
      return resign(idToken, rotated, {});
    case 'unpublished_key':
      return resign(idToken, unpublished, {});
    default:
      return idToken;
  }
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/test/account' && ctx.method === 'POST') {
    account = await readJson(ctx.req);
    ctx.status = 204;
    return;
  }
  if (ctx.path === '/test/mutate' && ctx.method === 'POST') {
    mutation = await readJson(ctx.req);
    if (!mutation.kind) mutation = null;
    ctx.status = 204;
    return;
  }
  if (ctx.path.startsWith('/interaction/')) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.prompt.name !== 'login') throw new Error(`unexpected prompt ${details.prompt.name}`);
    const url = await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: account.sub, amr: account.amr },
    }, { mergeWithLastSubmission: false });
    ctx.redirect(url);
    return;
  }
  await next();
  if (ctx.path === '/token' && ctx.status === 200 && ctx.body?.id_token && mutation) {
    ctx.body = { ...ctx.body, id_token: await mutate(ctx.body.id_token) };
  }
  if (ctx.path === '/jwks' && ctx.status === 200 && publishRotated) {
    ctx.body = { keys: [...ctx.body.keys, rotated.pub] };
  }
});

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});

