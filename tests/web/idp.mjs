// A real OpenID provider (the npm package `oidc-provider`) for medmesh's
// end-to-end tests, on 127.0.0.1 over plain http. Test-only: fixed users with
// known passwords (see README.md beside this file). Never run it for people.
//
// Configuration from the environment:
//   IDP_PORT                   port to listen on, 0 (default) = ephemeral
//   CLIENT_ID, CLIENT_SECRET   the confidential web client (client_secret_basic,
//                              authorization code flow, PKCE S256 required)
//   REDIRECT_URIS              comma list of its redirect URIs
//   POST_LOGOUT_REDIRECT_URIS  comma list of its post-logout redirect URIs
//   API_AUDIENCE               `aud` of access tokens for the node's API
//                              (default `medmesh-api`)
//   ROLES_CLAIM                name of the roles claim (default `medmesh_roles`)
//   MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET
//                              the client_credentials client (client_secret_basic
//                              or client_secret_post)
//
// When listening it prints one JSON line on stdout, {"issuer":"http://127.0.0.1:PORT"},
// and nothing else there (diagnostics go to stderr). It exits when its stdin
// closes and on SIGTERM/SIGINT.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

// Everything the library would print goes to stderr: stdout carries the one line.
console.log = console.error;
console.info = console.error;

const env = (name, dflt) => {
  const v = process.env[name];
  return v === undefined || v === '' ? dflt : v;
};
const list = (s) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);

const PORT = Number(env('IDP_PORT', '0'));
const CLIENT_ID = env('CLIENT_ID', 'medmesh-console');
const CLIENT_SECRET = env('CLIENT_SECRET', 'console-secret');
const REDIRECT_URIS = list(env('REDIRECT_URIS', ''));
const POST_LOGOUT_REDIRECT_URIS = list(env('POST_LOGOUT_REDIRECT_URIS', ''));
const API_AUDIENCE = env('API_AUDIENCE', 'medmesh-api');
const ROLES_CLAIM = env('ROLES_CLAIM', 'medmesh_roles');
const MACHINE_CLIENT_ID = env('MACHINE_CLIENT_ID', 'medmesh-machine');
const MACHINE_CLIENT_SECRET = env('MACHINE_CLIENT_SECRET', 'machine-secret');

// The resource indicator (RFC 8707, an absolute URI) that names the node's API:
// API_AUDIENCE itself when it is an absolute URI, else `urn:medmesh:api`.
// Tokens for it carry `aud` = API_AUDIENCE. Any other absolute URI asked as
// `resource` gives a token whose `aud` is that URI (a "wrong audience").
const API_RESOURCE = URL.canParse(API_AUDIENCE) ? API_AUDIENCE : 'urn:medmesh:api';
const API_SCOPE = 'medmesh.api';

export const ACR_MFA = 'urn:medmesh:mfa';
export const ACR_PWD = 'urn:medmesh:pwd';

const ROLES = [
  'site-admin',
  'data-steward',
  'clinician',
  'radiologist',
  'researcher',
  'privacy-officer',
  'auditor',
];

// Test users: password `pw-<login>`; TOTP secret `totp-<login>` (see totp()).
// `sub` is a stable opaque id, not the login.
const USERS = [
  ['steward', 'Sam Steward', ['data-steward'], true],
  ['researcher', 'Rae Researcher', ['researcher'], true],
  ['clinician', 'Cleo Clinician', ['clinician'], true],
  ['radiologist', 'Ray Radiologist', ['radiologist'], true],
  ['admin', 'Ada Admin', ['site-admin'], true],
  ['privacy', 'Pia Privacy', ['privacy-officer'], true],
  ['auditor', 'Aud Auditor', ['auditor'], true],
  ['nomfa', 'Noa Nomfa', ['clinician'], false],
].map(([login, name, roles, mfa]) => ({
  login,
  name,
  roles,
  mfa,
  password: `pw-${login}`,
  sub: subjectOf(login),
}));
const BY_LOGIN = new Map(USERS.map((u) => [u.login, u]));
const BY_SUB = new Map(USERS.map((u) => [u.sub, u]));

// A UUID-shaped id derived from the login, the same in every run.
function subjectOf(login) {
  const h = crypto.createHash('sha256').update(`medmesh-test-user:${login}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

// RFC 6238 TOTP with HMAC-SHA-256, 30 s steps, 6 digits; the key is the bytes
// of `totp-<login>`. tests/tests/e2e/idp.rs computes the same.
function totp(login, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha256', `totp-${login}`).update(counter).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = (mac.readUInt32BE(off) & 0x7fffffff) % 1_000_000;
  return String(bin).padStart(6, '0');
}

// The current code or the one before or after it (clock skew of one step).
function totpOk(login, code) {
  const now = Math.floor(Date.now() / 1000 / 30);
  return [now - 1, now, now + 1].some((s) => totp(login, s) === code);
}

const escape = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

// Access-token scopes a resource accepts: the API scope, `role:<role>` (the
// machine client's role) and `ttl:<seconds>` (a short-lived token).
function resourceScopes(ctx) {
  const requested = String(ctx.oidc.params?.scope || '').split(' ');
  const extra = requested.filter((s) => /^ttl:[1-9][0-9]{0,4}$/.test(s));
  return [API_SCOPE, ...ROLES.map((r) => `role:${r}`), ...extra].join(' ');
}

function ttlOf(ctx) {
  const requested = String(ctx.oidc.params?.scope || '').split(' ');
  const t = requested.find((s) => /^ttl:[1-9][0-9]{0,4}$/.test(s));
  return t ? Number(t.slice(4)) : undefined;
}

function rolesOfToken(token) {
  if (token.accountId && BY_SUB.has(token.accountId)) {
    return BY_SUB.get(token.accountId).roles;
  }
  const chosen = String(token.scope || '')
    .split(' ')
    .filter((s) => s.startsWith('role:'))
    .map((s) => s.slice(5));
  return chosen.length ? chosen : ['site-admin'];
}

async function main() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };

  let provider;
  const server = http.createServer((req, res) => {
    handle(provider, req, res).catch((err) => {
      console.error('idp: request failed:', err);
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
      }
      res.end('internal error');
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(PORT, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const webClient = {
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: `openid profile ${API_SCOPE} offline_access`,
  };
  const machineClient = {
    client_id: MACHINE_CLIENT_ID,
    client_secret: MACHINE_CLIENT_SECRET,
    redirect_uris: [],
    response_types: [],
    grant_types: ['client_credentials'],
    token_endpoint_auth_method: 'client_secret_basic',
  };
  const machinePost = { ...machineClient, client_id: `${MACHINE_CLIENT_ID}-post`, token_endpoint_auth_method: 'client_secret_post' };

  provider = new Provider(issuer, {
    clients: REDIRECT_URIS.length ? [webClient, machineClient, machinePost] : [machineClient, machinePost],
    jwks: { keys: [jwk] },
    // SameSite=Lax: a browser drops SameSite=None cookies that are not Secure (http).
    cookies: {
      keys: [crypto.randomBytes(32).toString('hex')],
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    scopes: ['openid', 'profile', 'offline_access', API_SCOPE],
    claims: {
      sid: null,
      iss: null,
      // acr, amr and auth_time go with `openid` so every ID token has them.
      openid: ['sub', 'acr', 'amr', 'auth_time', ROLES_CLAIM],
      profile: ['name'],
    },
    acrValues: [ACR_MFA, ACR_PWD],
    // The ID token carries the scopes' claims (name, roles) even when an
    // access token is issued too.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Grant: 3600,
      Session: 3600,
      RefreshToken: 3600,
    },
    async findAccount(_ctx, sub) {
      const user = BY_SUB.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, name: user.name, [ROLES_CLAIM]: user.roles };
        },
      };
    },
    // Consent is given without a screen: every known client is first-party.
    async loadExistingGrant(ctx) {
      const grantId =
        ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(`openid profile offline_access ${API_SCOPE}`);
      grant.addOIDCClaims(['sub', 'name', ROLES_CLAIM, 'acr', 'amr', 'auth_time']);
      grant.addResourceScope(API_RESOURCE, API_SCOPE);
      await grant.save();
      return grant;
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // client_credentials without `resource` asks for the API.
        defaultResource: (ctx, client, oneOf) =>
          oneOf ? oneOf : client.grantTypeAllowed('client_credentials') ? API_RESOURCE : undefined,
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, indicator) {
          return {
            audience: indicator === API_RESOURCE ? API_AUDIENCE : indicator,
            scope: resourceScopes(ctx),
            accessTokenFormat: 'jwt',
            accessTokenTTL: ttlOf(ctx) ?? 600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
      rpInitiatedLogout: {
        enabled: true,
        // No confirmation: the form posts itself (a browser without script
        // clicks the button with id `logout`).
        async logoutSource(ctx, form) {
          const auto = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
          ctx.body = page(
            'Signing out',
            `${auto}<button id="logout" type="submit" form="op.logoutForm">Sign out</button>
             <script>document.getElementById('op.logoutForm').submit()</script>`,
          );
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p id="signed-out">You are signed out of the test IdP.</p>');
        },
      },
    },
    async extraTokenClaims(_ctx, token) {
      if (token.kind === 'AccessToken' || token.kind === 'ClientCredentials') {
        return { [ROLES_CLAIM]: rolesOfToken(token) };
      }
      return undefined;
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<p id="error">${escape(out.error)}: ${escape(out.error_description || '')}</p>`);
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('idp: server_error', err));

  process.stdout.write(`${JSON.stringify({ issuer })}\n`);

  const stop = () => {
    server.close();
    process.exit(0);
  };
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)} - medmesh test IdP</title>
<style>body{font-family:sans-serif;margin:2em}label{display:block;margin-top:.8em}.error{color:#a00}</style>
</head><body><h1>${escape(title)}</h1>
${body}
</body></html>`;
}

function loginForm(uid, { login = '', error = '' } = {}) {
  return page(
    'Sign in',
    `${error ? `<p class="error" id="error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label for="login">Login</label><input id="login" name="login" value="${escape(login)}" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password">
<label for="otp">One-time code (optional)</label><input id="otp" name="otp" inputmode="numeric">
<p><button id="submit" type="submit">Sign in</button></p>
</form>`,
  );
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function handle(provider, req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(url.pathname);
  if (!m) {
    provider.callback()(req, res);
    return;
  }
  const [, uid, isLogin] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, page('Error', `<p id="error">${escape(err.message)}</p>`));
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<p id="error">interaction mismatch</p>'));
    return;
  }
  if (req.method === 'GET' && !isLogin) {
    if (details.prompt.name === 'login') {
      sendHtml(res, 200, loginForm(uid));
      return;
    }
    // Consent is given by loadExistingGrant; any other prompt is granted as is.
    await provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    return;
  }
  if (req.method === 'POST' && isLogin) {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const password = form.get('password') || '';
    const otp = (form.get('otp') || '').trim();
    const user = BY_LOGIN.get(login);
    if (!user || password !== user.password) {
      sendHtml(res, 200, loginForm(uid, { login, error: 'Wrong login or password.' }));
      return;
    }
    let mfa = false;
    if (otp !== '') {
      if (!user.mfa || !totpOk(user.login, otp)) {
        sendHtml(res, 200, loginForm(uid, { login, error: 'Wrong one-time code.' }));
        return;
      }
      mfa = true;
    }
    const result = {
      login: {
        accountId: user.sub,
        amr: mfa ? ['pwd', 'otp'] : ['pwd'],
        acr: mfa ? ACR_MFA : ACR_PWD,
        remember: true,
      },
    };
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    return;
  }
  res.writeHead(405, { 'content-type': 'text/plain' });
  res.end('method not allowed');
}

main().catch((err) => {
  console.error('idp: failed to start:', err);
  process.exit(1);
});
