// The official `twilio` Node.js package (twilio-node) against a live notify-server.
//
// Run by tests/test_node_sdk.py; by hand:
//   NOTIFY_BASE_URL=http://127.0.0.1:8000 NOTIFY_ACCOUNT_SID=AC... NOTIFY_AUTH_TOKEN=... \
//     node tests/node/sdk_roundtrip.mjs
// Prints one JSON summary line on stdout and exits 0; any mismatch throws (node:assert), which
// prints the failure on stderr and exits non-zero.
//
// Only the SDK's public surface is used: the generated resources (services, bindings) for every
// call it can make, and the generated code's own Version.create for the one request it refuses to
// build (a create without a required parameter).

import assert from "node:assert/strict";
import { createRequire } from "node:module";

import twilio from "twilio";

const require = createRequire(import.meta.url);
const SDK_VERSION = require("twilio/package.json").version;

function env(name) {
  const value = process.env[name];
  assert.ok(value, `${name} must be set`);
  return value;
}

const BASE_URL = env("NOTIFY_BASE_URL").replace(/\/+$/, "");
const ACCOUNT_SID = env("NOTIFY_ACCOUNT_SID");
const AUTH_TOKEN = env("NOTIFY_AUTH_TOKEN");

// Edge and region rewrite every request's host name (BaseTwilio.getHostname turns
// notify.twilio.com into notify.<edge>.<region>.twilio.com, and would mangle 127.0.0.1 too);
// they must not leak in from the environment.
assert.equal(process.env.TWILIO_EDGE, undefined, "unset TWILIO_EDGE");
assert.equal(process.env.TWILIO_REGION, undefined, "unset TWILIO_REGION");

/** The SDK's own HTTP client, keeping every exchange so the wire can be checked. */
class RecordingRequestClient extends twilio.RequestClient {
  constructor() {
    super({ timeout: 15000 });
    this.exchanges = [];
  }

  async request(opts) {
    const response = await super.request(opts);
    this.exchanges.push({
      method: opts.method,
      uri: opts.uri,
      params: opts.params,
      status: response.statusCode,
      body: response.body,
    });
    return response;
  }

  since(mark) {
    return this.exchanges.slice(mark);
  }
}

const http = new RecordingRequestClient();
const client = twilio(ACCOUNT_SID, AUTH_TOKEN, { httpClient: http });

// How twilio-node is pointed at another host: each product is a Domain (lib/base/Domain.js)
// built with its base URL ("https://notify.twilio.com" in lib/rest/NotifyBase.js), and every
// request's URL is Domain.absoluteUrl(uri) = baseUrl + "/" + "v1/..." (lib/base/Version.js).
// `baseUrl` is a plain public property of the Domain and `client.notify` is created once and
// cached (lib/rest/Twilio.js), so assigning it redirects every Notify call, scheme and port
// included. Paging does not use it: Page.nextPage() requests meta.next_page_url verbatim, so the
// server's absolute URLs are what keeps the SDK on this host. (The `edge`/`region` options only
// insert labels into *.twilio.com host names, and a custom httpClient would have to rewrite URLs
// itself.)
client.notify.baseUrl = BASE_URL;
const notify = client.notify.v1;

const SID = (prefix) => new RegExp(`^${prefix}[0-9a-f]{32}$`);
const WIRE_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;

function assertDate(value, raw, what) {
  // deserialize.iso8601DateTime leaves anything it cannot parse a string.
  assert.ok(value instanceof Date, `${what} should be a Date, got ${JSON.stringify(value)}`);
  assert.ok(!Number.isNaN(value.getTime()), `${what} is an invalid Date`);
  assert.match(raw, WIRE_DATE, `${what} on the wire`);
  assert.equal(value.toISOString(), raw.replace("Z", ".000Z"), `${what} round trip`);
  assert.ok(Math.abs(Date.now() - value.getTime()) < 10 * 60 * 1000, `${what} is not recent`);
}

async function restError(promise, what) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof twilio.RestException, `${what}: ${error}`);
    return error;
  }
  assert.fail(`${what} should have failed`);
}

function assertRestError(error, status, code, message) {
  assert.deepEqual(
    {
      status: error.status,
      code: error.code,
      message: error.message,
      moreInfo: error.moreInfo,
    },
    { status, code, message, moreInfo: `https://www.twilio.com/docs/errors/${code}` },
  );
}

/** The list requests since `mark`: each page request must be the previous page's next URL. */
function pagesSince(mark, key) {
  const pages = http.since(mark).filter((e) => e.method === "get");
  assert.ok(pages.length > 0, "no page was requested");
  pages.forEach((page, i) => {
    assert.equal(page.status, 200, `page ${i}: ${page.body}`);
    const meta = asJson(page.body).meta;
    assert.equal(meta.key, key);
    if (i > 0) {
      const previous = asJson(pages[i - 1].body).meta;
      // The SDK followed the server's next_page_url, verbatim.
      assert.equal(page.uri, previous.next_page_url, `page ${i} is not the next_page_url`);
      assert.ok(page.uri.startsWith(`${BASE_URL}/v1/`), `next_page_url ${page.uri}`);
    }
  });
  return pages.map((page) => {
    const body = asJson(page.body);
    return { size: body[key].length, next: body.meta.next_page_url };
  });
}

// Axios has usually parsed the body already; Version does the same check.
const asJson = (body) => (typeof body === "string" ? JSON.parse(body) : body);
const sids = (records) => records.map((record) => record.sid);

async function main() {
  // --- create a service ----------------------------------------------------------------------
  const service = await notify.services.create({ friendlyName: "node-sdk roundtrip" });
  assert.match(service.sid, SID("IS"));
  assert.equal(service.accountSid, ACCOUNT_SID);
  assert.equal(service.friendlyName, "node-sdk roundtrip");
  assert.equal(service.logEnabled, true);
  assert.equal(service.url, `${BASE_URL}/v1/Services/${service.sid}`);
  assertDate(service.dateCreated, asJson(http.exchanges.at(-1).body).date_created, "service");
  // Every SDK fixture's Service carries "type": "S"; twilio-node has no property for it.
  assert.equal(asJson(http.exchanges.at(-1).body).type, "S", "service type on the wire");
  const bindings = notify.services(service.sid).bindings;

  // --- create 7 bindings: different identities, tags, types ----------------------------------
  const PLAN = [
    { identity: "alice", bindingType: "apn", address: "apn-token-alice", tag: ["vip", "eu"] },
    { identity: "bob", bindingType: "fcm", address: "fcm-token-bob", tag: ["eu"] },
    { identity: "carol", bindingType: "sms", address: "+15005550001", tag: ["vip", "us"] },
    { identity: "dave", bindingType: "apn", address: "apn-token-dave", tag: ["us"] },
    { identity: "erin", bindingType: "gcm", address: "gcm-token-erin", tag: ["vip", "eu"] },
    { identity: "frank", bindingType: "apn", address: "apn-token-frank", tag: [] },
    { identity: "grace", bindingType: "fcm", address: "fcm-token-grace", tag: ["vip", "us"] },
  ];
  const created = [];
  for (const plan of PLAN) {
    const binding = await bindings.create(plan);
    assert.equal(http.exchanges.at(-1).status, 201, "create answers 201");
    assert.match(binding.sid, SID("BS"));
    assert.equal(binding.serviceSid, service.sid);
    assert.equal(binding.accountSid, ACCOUNT_SID);
    assert.equal(binding.identity, plan.identity);
    assert.equal(binding.bindingType, plan.bindingType);
    assert.equal(binding.address, plan.address);
    assert.deepEqual(binding.tags, plan.tag);
    assert.equal(binding.endpoint, null);
    assert.equal(binding.credentialSid, null);
    assert.equal(
      binding.notificationProtocolVersion,
      plan.bindingType === "sms" ? "default" : "3",
    );
    assert.equal(binding.url, `${BASE_URL}/v1/Services/${service.sid}/Bindings/${binding.sid}`);
    created.push(binding);
  }
  const createdSids = sids(created);
  assert.equal(new Set(createdSids).size, 7, "seven distinct bindings");
  const sidOf = Object.fromEntries(created.map((b) => [b.identity, b.sid]));

  // --- list everything, two per page: the SDK follows next_page_url to the end ----------------
  let mark = http.exchanges.length;
  const listed = await bindings.list({ pageSize: 2 });
  assert.deepEqual(sids(listed), createdSids, "all 7, exactly once, in creation order");
  const allPages = pagesSince(mark, "bindings");
  assert.deepEqual(
    allPages.map((p) => p.size),
    [2, 2, 2, 1],
  );
  assert.equal(allPages.at(-1).next, null, "the last page has no next_page_url");
  assert.deepEqual(http.exchanges[mark].params, { PageSize: 2 });

  // limit stops the SDK early (after the third page: 2 + 2 + 1 of 2).
  mark = http.exchanges.length;
  const limited = await bindings.list({ limit: 5, pageSize: 2 });
  assert.deepEqual(sids(limited), createdSids.slice(0, 5));
  assert.equal(pagesSince(mark, "bindings").length, 3);

  // --- filters, one per page, so the next_page_urls must carry them ---------------------------
  mark = http.exchanges.length;
  const byIdentity = await bindings.list({ identity: ["grace", "alice", "dave"], pageSize: 1 });
  assert.deepEqual(sids(byIdentity), [sidOf.alice, sidOf.dave, sidOf.grace]);
  const identityPages = pagesSince(mark, "bindings");
  assert.equal(identityPages.length, 3);
  for (const page of identityPages.slice(0, -1)) {
    const query = new URL(page.next).searchParams;
    assert.deepEqual(query.getAll("Identity").sort(), ["alice", "dave", "grace"]);
  }

  mark = http.exchanges.length;
  const byTags = await bindings.list({ tag: ["vip", "us"], pageSize: 1 });
  assert.deepEqual(sids(byTags), [sidOf.carol, sidOf.grace], "Tag filters are all-of");
  assert.equal(pagesSince(mark, "bindings").length, 2);

  const byType = await bindings.list({ tag: ["apn"] });
  assert.deepEqual(sids(byType), [sidOf.alice, sidOf.dave, sidOf.frank], "a type name as a tag");

  mark = http.exchanges.length;
  const both = await bindings.list({ identity: ["alice", "bob", "erin"], tag: ["vip"], pageSize: 1 });
  assert.deepEqual(sids(both), [sidOf.alice, sidOf.erin]);
  // The paging URLs keep the parameters in the order the SDK sent them (Identity, then Tag).
  assert.equal(
    new URL(pagesSince(mark, "bindings")[0].next).search.split("&Page=")[0],
    "?Identity=alice&Identity=bob&Identity=erin&Tag=vip&PageSize=1",
    "paging URL keeps the SDK's parameter order",
  );

  const none = await bindings.list({ identity: ["nobody"] });
  assert.deepEqual(none, []);

  // --- fetch one ------------------------------------------------------------------------------
  const fetched = await bindings(sidOf.erin).fetch();
  const fetchedRaw = asJson(http.exchanges.at(-1).body);
  assert.equal(fetched.sid, sidOf.erin);
  assert.equal(fetched.identity, "erin");
  assert.equal(fetched.bindingType, "gcm");
  assert.deepEqual(fetched.tags, ["vip", "eu"]);
  assertDate(fetched.dateCreated, fetchedRaw.date_created, "binding dateCreated");
  assertDate(fetched.dateUpdated, fetchedRaw.date_updated, "binding dateUpdated");
  assert.deepEqual(fetched.links, {
    user: `${BASE_URL}/v1/Services/${service.sid}/Users/erin`,
  });

  // --- the links lead somewhere: Users and Segments, which twilio-node has no classes for, ------
  // through the client's own request() (auth, headers, the recording HTTP client) ------------------
  const get = async (uri) => {
    const response = await client.request({ method: "get", uri });
    assert.equal(response.statusCode, 200, `GET ${uri}: ${JSON.stringify(response.body)}`);
    return asJson(response.body);
  };
  const user = await get(fetched.links.user);
  assert.equal(user.identity, "erin");
  assert.match(user.sid, SID("US"));
  assert.equal(user.url, fetched.links.user);
  const userBindings = await get(user.links.bindings);
  assert.deepEqual(sids(userBindings.bindings), [sidOf.erin]);
  assert.equal(
    userBindings.bindings[0].url,
    `${fetched.links.user}/Bindings/${sidOf.erin}`,
    "a user's binding lives under the user",
  );
  const users = await get(service.links.users);
  assert.deepEqual(
    users.users.map((u) => u.identity),
    PLAN.map((p) => p.identity),
    "one user per identity",
  );
  const segments = await get(service.links.segments);
  assert.deepEqual(segments.segments, [], "no segments are kept");

  // --- delete it, then it is gone -------------------------------------------------------------
  const removed = await bindings(sidOf.erin).remove();
  assert.equal(removed, true);
  assert.equal(http.exchanges.at(-1).status, 204, "delete answers 204");

  const goneError = await restError(bindings(sidOf.erin).fetch(), "fetch after delete");
  assertRestError(
    goneError,
    404,
    20404,
    `The requested resource /Services/${service.sid}/Bindings/${sidOf.erin} was not found`,
  );
  const remaining = sids(await bindings.list({ pageSize: 4 }));
  assert.deepEqual(
    remaining,
    createdSids.filter((sid) => sid !== sidOf.erin),
  );

  // --- a create without a required parameter --------------------------------------------------
  // The generated bindings.create() refuses to send one ("Required parameter ... missing"), so the
  // request goes through the same Version.create() the generated code calls, minus that check.
  const missingError = await restError(
    notify.create({
      uri: `/Services/${service.sid}/Bindings`,
      method: "post",
      data: { Identity: "heidi", BindingType: "apn" },
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
    }),
    "create without Address",
  );
  assertRestError(missingError, 400, 20001, "Missing required parameter Address in the post body");

  // And one the SDK does send, invalid on the server's side: an sms Address not in E.164.
  const invalidError = await restError(
    bindings.create({ identity: "heidi", bindingType: "sms", address: "5550001" }),
    "sms binding without E.164 address",
  );
  assertRestError(
    invalidError,
    400,
    20001,
    "Parameter 'Address' is invalid: an sms Binding's Address must be a phone number in E.164" +
      " format",
  );
  assert.deepEqual(
    sids(await bindings.list({ identity: ["heidi"] })),
    [],
    "failed creates store nothing",
  );

  return {
    sdk: "twilio-node",
    sdk_version: SDK_VERSION,
    service_sid: service.sid,
    created: createdSids,
    listed: sids(listed),
    page_sizes: allPages.map((p) => p.size),
    limited: limited.length,
    by_identity: byIdentity.map((b) => b.identity),
    by_tags: byTags.map((b) => b.identity),
    by_type: byType.map((b) => b.identity),
    fetched: { sid: fetched.sid, date_created: fetched.dateCreated.toISOString() },
    user: { identity: user.identity, bindings: sids(userBindings.bindings) },
    users: users.users.length,
    segments: segments.segments.length,
    deleted: sidOf.erin,
    removed,
    remaining,
    not_found: { status: goneError.status, code: goneError.code },
    missing_parameter: { status: missingError.status, code: missingError.code },
    invalid_parameter: { status: invalidError.status, code: invalidError.code },
    requests: http.exchanges.length,
  };
}

function describe(error) {
  // Concise on purpose: inspecting an AxiosError prints the request's Authorization header.
  if (error instanceof assert.AssertionError) {
    return { error: "AssertionError", message: error.message };
  }
  if (error instanceof twilio.RestException) {
    return {
      error: "RestException",
      status: error.status,
      code: error.code,
      message: error.message,
    };
  }
  return {
    error: error?.name ?? "Error",
    code: error?.code,
    message: String(error?.message ?? error),
  };
}

main().then(
  (summary) => {
    console.log(JSON.stringify(summary));
  },
  (error) => {
    console.error(JSON.stringify(describe(error)));
    const last = http.exchanges.at(-1);
    if (last) console.error(`last exchange: ${last.method} ${last.uri} -> ${last.status}`);
    process.exit(1);
  },
);
