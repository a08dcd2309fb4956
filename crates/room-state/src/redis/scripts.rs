//! The Lua scripts. Each runs atomically inside one slot (one room, or one limit key).
//! They are loaded once and called by SHA; `evalsha_with_reload` reloads them on NOSCRIPT,
//! which a promoted replica answers after a failover (its script cache starts empty).

/// Shared prologue: when a room's meta hash is gone but members remain (eviction, flush), the
/// room starts a new epoch with an empty history, so offsets are never reused.
/// KEYS: meta, members, who, history. ARGV[1..4]: new epoch, default hist, default ttl, now.
const ENSURE_META: &str = r#"
local function ensure_meta(new_epoch, dhist, dttl, now)
  if redis.call('EXISTS', KEYS[1]) == 1 then return true end
  if redis.call('EXISTS', KEYS[2]) == 0 then return false end
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[1], 'epoch', new_epoch, 'offset', 0, 'max', 0, 'hist', dhist,
    'ttl', dttl, 'created', now, 'seq', redis.call('ZCARD', KEYS[2]))
  return true
end
"#;

/// The readers' helpers: a room's members with their user and node, and history entries in
/// the form `history::parse` reads. Only the scripts that use them define them (a `local
/// function` is a closure made on every call).
const HELPERS: &str = r#"
local function member_list()
  local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
  local w = redis.call('HGETALL', KEYS[3])
  local info = {}
  for i = 1, #w, 2 do info[w[i]] = w[i + 1] end
  local out = {}
  for i, id in ipairs(ids) do out[i] = id .. '\n' .. (info[id] or '\n') end
  return out
end
local function entries(raw)
  local out = {}
  for i, e in ipairs(raw) do
    local f = e[2]
    local m = {}
    for j = 1, #f, 2 do m[f[j]] = f[j + 1] end
    local offset = string.match(e[1], '^(%d+)')
    out[i] = offset .. '\n' .. (m['f'] or '') .. '\n' .. (m['t'] or '0') .. '\n' .. (m['d'] or 'null')
  end
  return out
end
"#;

/// KEYS: meta, members, who, history. ARGV: epoch, max, hist, ttl ms, now, and the ms the
/// keys outlive the TTL (`SLEEP_BACKSTOP_MS` while the archive is on: the sleep sweep removes
/// the room; '0' otherwise).
/// Returns 1 when created, 0 when the room exists.
pub const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'max', ARGV[2], 'hist', ARGV[3],
  'ttl', ARGV[4], 'created', ARGV[5], 'seq', 0)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[6] or '0'))
return 1
"#;

/// KEYS: meta, members, who, history. ARGV: epoch, offset, max, hist, ttl ms, created, extra
/// ms (as `CREATE`), then the history to restore, four values per message, oldest first:
/// offset, from, ts, data.
/// A sleeping room comes back as it was: like `CREATE` (0 when the room exists: another node
/// woke it first), with its epoch and offset, and the archive cursor `arch` at the offset
/// (everything up to it is archived: that is when a room may sleep).
pub const WAKE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', ARGV[2], 'max', ARGV[3], 'hist', ARGV[4],
  'ttl', ARGV[5], 'created', ARGV[6], 'seq', 0, 'arch', ARGV[2])
for i = 8, #ARGV, 4 do
  redis.call('XADD', KEYS[4], ARGV[i] .. '-0', 'f', ARGV[i + 1], 'd', ARGV[i + 3], 't', ARGV[i + 2])
end
local keep = tonumber(ARGV[5]) + tonumber(ARGV[7])
redis.call('PEXPIRE', KEYS[1], keep)
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], keep) end
return 1
"#;

/// KEYS: meta, members, who, history.
/// Returns {1, epoch, offset, arch, max, hist, ttl ms, created, members} or {0} gone.
pub const SLEEP_STATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'arch', 'max', 'hist', 'ttl', 'created')
return {1, m[1], tonumber(m[2] or '0'), tonumber(m[3] or '0'), tonumber(m[4] or '0'),
  tonumber(m[5] or '0'), tonumber(m[6] or '0'), tonumber(m[7] or '0'), redis.call('ZCARD', KEYS[2])}
"#;

/// KEYS: meta, members, who, history. ARGV: epoch, offset (as saved to the archive).
/// Removes a room put to sleep if it is still as saved: same epoch and offset, no member.
/// Returns 1 removed or gone already, 0 awake (it stays).
pub const SLEEP_FORGET: &str = r#"
local members = redis.call('ZCARD', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  if members == 0 then return 1 end
  return 0
end
if members > 0 then return 0 end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if m[1] ~= ARGV[1] or tonumber(m[2] or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"#;

/// KEYS: a rooms index shard. ARGV: room, now. Drops the room's entry if it is due (not if a
/// wake or a join gave it a later expiry or `+inf` meanwhile). Returns 1 when dropped.
pub const INDEX_FORGET: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#;

/// KEYS: meta, members, who, history. ARGV: new epoch, dhist, dttl, now, conn, user, node,
/// since offset ('' for none), since epoch.
/// Returns {status, offset, epoch, already, members, recovered, missed, was_empty, hist} where
/// status 1 = ok, 0 = not found, -1 = full; recovered -1 = not asked; hist is the room's
/// history size (0: ephemeral, where `since` never recovers: nothing is kept).
pub fn join() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if not ensure_meta(ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return {0} end
local conn = ARGV[5]
local already = redis.call('ZSCORE', KEYS[2], conn) ~= false
local was_empty = 0
if not already then
  local count = redis.call('ZCARD', KEYS[2])
  local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '0')
  if max > 0 and count >= max then return {-1} end
  if count == 0 then was_empty = 1 end
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('ZADD', KEYS[2], seq, conn)
  redis.call('HSET', KEYS[3], conn, ARGV[6] .. '\n' .. ARGV[7])
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local hist = tonumber(redis.call('HGET', KEYS[1], 'hist') or '0')
local recovered = -1
local missed = {}
if ARGV[8] ~= '' then
  local since = tonumber(ARGV[8])
  if hist == 0 or ARGV[9] ~= epoch or since > offset then
    recovered = 0
  elseif since == offset then
    recovered = 1
  else
    local raw = redis.call('XRANGE', KEYS[4], (since + 1) .. '-0', '+')
    if #raw == offset - since and string.match(raw[1][1], '^(%d+)') == tostring(since + 1) then
      recovered = 1
      missed = entries(raw)
    else
      recovered = 0
    end
  end
end
return {1, offset, epoch, already and 1 or 0, member_list(), recovered, missed, was_empty, hist}
"#
    )
}

/// KEYS: meta, members, who, history. ARGV: conn, the ms the keys outlive the TTL ('0', or
/// `SLEEP_BACKSTOP_MS` while the archive is on: see `CREATE`).
/// Returns {removed (0/1), now_empty (0/1), "user\nnode"}.
pub const LEAVE: &str = r#"
local info = redis.call('HGET', KEYS[3], ARGV[1]) or ''
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'q:' .. ARGV[1])
if removed == 1 and redis.call('ZCARD', KEYS[2]) == 0 then
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
  if ttl > 0 then
    ttl = ttl + tonumber(ARGV[2] or '0')
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
  return {1, 1, info}
end
return {removed, 0, info}
"#;

/// KEYS: meta, members, who, history, and the idempotency key's record when there is one.
/// ARGV: new epoch, dhist, dttl, now, conn ('' = server), from, data, channel, room, spublish
/// ('1' to publish inside the script, '0' when the caller publishes after WAIT, for durable
/// publishes), idempotency window in ms ('' = no key).
/// ARGV[12]: the deadline, in Redis server milliseconds ('' = none): a script that starts after
/// it does nothing, because its caller has given up on it (answered `timeout`); a command that
/// waited in a paused primary, or that fred re-sent after a reconnect, must not apply late.
/// ARGV[13]: the publisher's sequence number ('' or '0' = no order to keep): refused ({-4})
/// unless above the last one sequenced for the connection in this room, which the meta hash
/// keeps in field `q:<conn>` (dropped at leave). A connection pipelines its publishes, and a
/// re-sent one must not land after a later one (`model::Publisher`).
/// ARGV[14]: the backlog cap when the archive is on (`ArchiveFeed::enable_archiving`), ''
/// when it is off: the history is not trimmed past the archive cursor (`arch`), a room whose
/// unarchived messages reach the cap is refused ({-5}), and the room is marked dirty (`ad` = now) when it
/// is not marked, or its mark is older than `ARCHIVE_RESIGNAL_MS` (a mark lost with a crashed
/// gateway or a failed-over index primary comes back); the 4th reply element is then 1 and
/// the caller adds the room to the dirty-rooms index (another slot, so not from here).
/// Returns {1, offset, epoch, mark}, {2, offset, epoch} for a key already published (in whatever
/// epoch: its record replicates with the write, so a surviving record means a surviving
/// message; nothing is published), {-4} out of the connection's order, {4} for an ephemeral room (`hist` 0: published without
/// an offset, see below), {0} not found, {-2} not a member, {-3} past the deadline, {-5} the
/// archive's backlog in this room is full.
/// The SPUBLISH of the envelope happens inside the script, so delivery order is offset order.
///
/// The script reads the meta hash once (one HMGET of every field it needs) and writes it once
/// (one HSET of the offset, the sequence number and the archive mark), after the XADD: each
/// `redis.call` costs about as much as the work it does, and a refused XADD must not leave
/// the offset moved past a missing entry.
///
/// An ephemeral room (the gateway's members publish through a plain SPUBLISH instead; this
/// branch serves the server API and a node that has not seen the room yet): membership is
/// checked as usual, then the envelope goes out with offset 0 and an empty epoch, whatever
/// ARGV[10] says (there is nothing to replicate first), and nothing is written: no offset,
/// no history, no idempotency record.
pub fn publish() -> String {
    publish_template()
        .replace("ARCHIVE_RESIGNAL_MS", &ARCHIVE_RESIGNAL_MS.to_string())
        .replace(
            "SLEEP_BACKSTOP_MS",
            &crate::archive_feed::SLEEP_BACKSTOP_MS.to_string(),
        )
}

/// A room marked dirty longer ago than this is marked again by its next publish: a mark that
/// did not reach the dirty-rooms index (its gateway died in between, or the index's primary
/// failed over) comes back, at the cost of one index write per room per this interval while
/// the archive lags.
pub const ARCHIVE_RESIGNAL_MS: u64 = 10_000;

fn publish_template() -> String {
    format!(
        "{ENSURE_META}{}{}\n  return {{4}}\nend\n{}{}\nend\nreturn {{1, offset, epoch, mark}}\n",
        r#"
if ARGV[12] ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[12]) then return {-3} end
end
-- Everything the script reads from the meta hash, in one call. A hash without an epoch is
-- gone (or half-made): ensure_meta decides, as it always did, and the fields are read again.
local field = 'q:' .. ARGV[5]
local meta = redis.call('HMGET', KEYS[1], 'hist', 'epoch', 'offset', 'arch', 'ad', field)
if not meta[2] then
  if not ensure_meta(ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return {0} end
  meta = redis.call('HMGET', KEYS[1], 'hist', 'epoch', 'offset', 'arch', 'ad', field)
end
if ARGV[5] ~= '' and redis.call('ZSCORE', KEYS[2], ARGV[5]) == false then return {-2} end
local hist = tonumber(meta[1] or '0')
if hist == 0 then
  redis.call('SPUBLISH', ARGV[8], "#,
        message_envelope("0", "''"),
        r#"
if ARGV[11] ~= '' then
  local seen = redis.call('GET', KEYS[5])
  if seen then
    local e, o = string.match(seen, '^(.*)\t(%d+)$')
    if e and o then return {2, tonumber(o), e} end
  end
end
local last = tonumber(meta[3] or '0')
local archiving = ARGV[14] ~= ''
local arch = 0
if archiving then
  arch = tonumber(meta[4] or '0')
  if last - arch >= tonumber(ARGV[14]) then return {-5} end
end
local seq = 0
if ARGV[13] ~= '' and ARGV[13] ~= '0' then
  seq = tonumber(ARGV[13])
  if seq <= tonumber(meta[6] or '0') then return {-4} end
end
local offset = last + 1
local epoch = meta[2]
local keep = hist
if archiving and offset - arch > keep then keep = offset - arch end
-- The entry first: a write refused here (memory, a stream ahead of the offset) leaves
-- nothing behind, so the offset never moves past a missing entry.
redis.call('XADD', KEYS[4], 'MAXLEN', keep, offset .. '-0', 'f', ARGV[6], 'd', ARGV[7], 't', ARGV[4])
local mark = 0
local set = {'offset', offset}
if seq > 0 then
  set[#set + 1] = field
  set[#set + 1] = seq
end
if archiving then
  local marked = tonumber(meta[5] or '0')
  if marked == 0 or tonumber(ARGV[4]) - marked > ARCHIVE_RESIGNAL_MS then
    set[#set + 1] = 'ad'
    set[#set + 1] = ARGV[4]
    mark = 1
  end
end
redis.call('HSET', KEYS[1], unpack(set))
if ARGV[11] ~= '' then
  redis.call('SET', KEYS[5], epoch .. '\t' .. offset, 'PX', tonumber(ARGV[11]))
end
-- A member's publish (checked above) leaves the room occupied: only a server publish can
-- land in an empty room, whose keys must keep expiring.
if ARGV[5] == '' and redis.call('ZCARD', KEYS[2]) == 0 then
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
  -- While archiving, the sleep sweep removes the room; the keys' TTL is only a backstop.
  if archiving then ttl = ttl + SLEEP_BACKSTOP_MS end
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end
if ARGV[10] == '1' then
  redis.call('SPUBLISH', ARGV[8], "#,
        message_envelope("offset", "epoch"),
    )
}

/// The Lua expression that packs the `message` envelope for the publish script: the map
/// `protocol::envelope` decodes, with its names taken from there (a renamed field is renamed
/// here too). `offset` and `epoch` are Lua expressions: the script's locals, or an ephemeral
/// message's placeholders (`0`, `''`); `ts` is the publish time.
fn message_envelope(offset: &str, epoch: &str) -> String {
    use protocol::envelope::{message as m, TAG};
    format!(
        "cmsgpack.pack({{{TAG} = '{tag}', {room} = ARGV[9], {offset_name} = {offset}, \
         {epoch_name} = {epoch}, {from} = ARGV[6], {data} = ARGV[7], {ts} = tonumber(ARGV[4])}}))",
        tag = m::TAG_VALUE,
        room = m::ROOM,
        offset_name = m::OFFSET,
        epoch_name = m::EPOCH,
        from = m::FROM,
        data = m::DATA,
        ts = m::TS,
    )
}

/// KEYS: meta, members, who, history. ARGV: requester ('' = none).
/// Returns {1, members}, {0} not found, {-2} not a member.
pub fn members() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
if ARGV[1] ~= '' and redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then return {-2} end
return {1, member_list()}
"#
    )
}

/// KEYS: meta, members, who, history. ARGV: requester ('' = none), limit, before ('' = none).
/// Returns {1, epoch, entries newest last}, {0}, {-2}.
pub fn history() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if ARGV[1] ~= '' and redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then return {-2} end
local top = '+'
if ARGV[3] ~= '' then
  local before = tonumber(ARGV[3])
  if before <= 1 then return {1, redis.call('HGET', KEYS[1], 'epoch'), {}} end
  top = (before - 1) .. '-0'
end
-- The window, not what is kept beyond it for the archiver (see publish).
local m = redis.call('HMGET', KEYS[1], 'offset', 'hist')
local low = tonumber(m[1] or '0') - tonumber(m[2] or '0')
local bottom = '-'
if low > 0 then bottom = '(' .. low .. '-0' end
local raw = redis.call('XREVRANGE', KEYS[4], top, bottom, 'COUNT', tonumber(ARGV[2]))
local rev = {}
for i = #raw, 1, -1 do rev[#rev + 1] = raw[i] end
return {1, redis.call('HGET', KEYS[1], 'epoch'), entries(rev)}
"#
    )
}

/// KEYS: meta, members, who, history.
/// Returns {1, epoch, offset, max, hist, ttl, created, members} or {0}.
pub fn info() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'max', 'hist', 'ttl', 'created')
return {1, m[1], tonumber(m[2]), tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), tonumber(m[6]), member_list()}
"#
    )
}

/// KEYS: meta, members, who, history. Returns {1, members} or {0}.
pub fn close() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
local list = member_list()
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return {1, list}
"#
    )
}

/// KEYS: meta, members, who, history. ARGV: the epoch to retire, a new epoch.
/// Starts a new epoch (offset 0, empty history) if the room is still in the old one.
/// Returns {1, epoch in force} (1 when this call changed it, 0 otherwise) or {0} not found.
pub const RESET_EPOCH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return {1, 0, epoch} end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'offset', 0, 'arch', 0)
redis.call('DEL', KEYS[4])
return {1, 1, ARGV[2]}
"#;

/// KEYS: window zset. ARGV: now, window ms, limit, member. Returns {allowed, retry ms}.
pub const WINDOW_ACQUIRE: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"#;

/// KEYS: window zset. ARGV: now. Removes one acquisition recorded at `now`.
pub const WINDOW_RELEASE: &str = r#"
local hit = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1)
if #hit > 0 then redis.call('ZREM', KEYS[1], hit[1]) end
return #hit
"#;

/// KEYS: bucket hash. ARGV: now, rate per second, burst, tokens wanted (1 if absent).
/// Returns {tokens granted (as many as held, up to the wanted), retry ms when none}.
pub const BUCKET_TAKE: &str = r#"
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local want = tonumber(ARGV[4]) or 1
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) / 1000 * rate)
ts = math.max(ts, now)
local granted, wait = math.max(0, math.min(want, math.floor(tokens))), 0
if granted > 0 then
  tokens = tokens - granted
elseif rate <= 0 then
  wait = 60000
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
local keep = 60000
if rate > 0 then keep = math.ceil(burst / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], keep)
return {granted, wait}
"#;

/// KEYS: creation counter hash. ARGV: second, oldest second to keep, cleanup (0/1).
pub const RECORD_CREATION: &str = r#"
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if ARGV[3] == '1' then
  local oldest = tonumber(ARGV[2])
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if tonumber(f) < oldest then redis.call('HDEL', KEYS[1], f) end
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"#;

/// KEYS: nodes hash. ARGV: now. Removes and returns the ids of expired nodes.
pub const CLAIM_DEAD_NODES: &str = r#"
local now = tonumber(ARGV[1])
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expires = tonumber(string.match(all[i + 1], '([^\t]*)$'))
  if expires and expires <= now then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HSET', KEYS[2], all[i], now)
    dead[#dead + 1] = all[i]
  end
end
-- Forget claims nobody came back for within a day.
local claimed = redis.call('HGETALL', KEYS[2])
for i = 1, #claimed, 2 do
  if tonumber(claimed[i + 1]) < now - 86400000 then redis.call('HDEL', KEYS[2], claimed[i]) end
end
return dead
"#;

/// A heartbeat: refresh the node's entry, and read when a reaper last claimed this node as
/// dead (nil if never). The mark is only read, never consumed: a heartbeat from a round the
/// node gave up on may still run late, and must not hide a claim from the next one.
pub const HEARTBEAT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[2], ARGV[1])
"#;

/// KEYS: meta, members, who, history. ARGV: limit.
/// Returns {1, epoch, cursor, offset, entries after the cursor (oldest first)} or {0} when
/// the room is gone.
pub fn archive_read() -> String {
    format!(
        "{ENSURE_META}{HELPERS}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'arch')
local cursor = tonumber(m[3] or '0')
local raw = redis.call('XRANGE', KEYS[4], '(' .. cursor .. '-0', '+', 'COUNT', tonumber(ARGV[1]))
return {1, m[1], cursor, tonumber(m[2] or '0'), entries(raw)}
"#
    )
}

/// KEYS: meta. ARGV: epoch, upto.
/// Moves `arch` up to `upto` if the room is still in `epoch` and `arch` is lower; clears the
/// dirty mark `ad` when no newer offset exists. Returns {1, dirty (0/1)} or {0} gone.
pub const ARCHIVE_ADVANCE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'arch')
local offset = tonumber(m[2] or '0')
local arch = tonumber(m[3] or '0')
local upto = tonumber(ARGV[2])
if m[1] == ARGV[1] and upto > arch then
  if upto > offset then upto = offset end
  arch = upto
  redis.call('HSET', KEYS[1], 'arch', arch)
end
if offset <= arch then
  redis.call('HDEL', KEYS[1], 'ad')
  return {1, 0}
end
return {1, 1}
"#;

/// KEYS: lease. ARGV: holder, ttl ms. Takes the lease when free, renews it when `holder`
/// has it. Returns 1 when `holder` holds it, 0 otherwise. A ttl of 0 releases it, if
/// `holder` has it.
pub const LEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if current == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"#;

/// Takes expired rooms out of one active-rooms index shard: KEYS[1] the shard; ARGV[1] now
/// (ms), then pairs (room, report): each room whose score is still at or below now is removed,
/// and returned when its report is '1'. The score is checked here, atomically, because the
/// room may have been created again (a new, later score) since the caller read it; and the
/// removal decides which of the nodes running this at once reports the expiry.
pub const EXPIRE_ROOMS: &str = r#"
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV - 1, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], ARGV[i])
    if ARGV[i + 1] == '1' then out[#out + 1] = ARGV[i] end
  end
end
return out
"#;

/// The user registry's admission: KEYS[1] the user's hash; ARGV conn id, value, cap (0: none).
/// Returns `{admitted, count}`: the count after adding, or the count that refused it.
pub const USER_ADD: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return {1, redis.call('HLEN', KEYS[1])}
end
local n = redis.call('HLEN', KEYS[1])
local max = tonumber(ARGV[3])
if max > 0 and n >= max then
  return {0, n}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, n + 1}
"#;

/// Removes one connection of a user: `{removed, left}`. An empty hash is gone by itself.
pub const USER_REMOVE: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
return {removed, redis.call('HLEN', KEYS[1])}
"#;
