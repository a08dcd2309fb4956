#!/usr/bin/env bash
# The archive's page query at a million rows (docs/benchmarks.md, "Archive"; docs/archive.md,
# "Past one machine"): fills `messages` with 1,000,000 rows (one room of 500,000 interleaved
# with 5,000 rooms of 100, so the big room's rows are spread over the heap as a busy room's
# are among many others'), prints `EXPLAIN (ANALYZE, BUFFERS)` of the page query exactly as
# crates/archive/src/postgres.rs sends it (a prepared statement with bound parameters) for a
# first page and a deep page, then times PAGES executions of each with pgbench (prepared
# protocol, one client), and removes its rows.
#
#   loadtest/archive_paging.sh POSTGRES_URL [PAGES]
#
# POSTGRES_URL: a migrated archive (a gateway or the archive's tests ran on it once);
# PAGES: 1000. Needs psql and pgbench (Debian's postgresql-client / postgresql).
set -euo pipefail
url=$1 pages=${2:-1000}
p="pg$(date +%s)-"
work=$(mktemp -d)
trap 'psql "$url" -q -c "DELETE FROM messages WHERE room LIKE '"'"'$p%'"'"'" >/dev/null; rm -rf "$work"' EXIT

# The page query of crates/archive/src/postgres.rs (`page`), column for column.
QUERY='SELECT room, epoch, "offset", user_id, created_ms, payload FROM messages
       WHERE room = $1 AND epoch = $2 AND "offset" < $3
       ORDER BY "offset" DESC LIMIT $4'

start=$(date +%s.%N)
psql "$url" -v ON_ERROR_STOP=1 -q <<SQL
INSERT INTO messages (room, epoch, "offset", user_id, created_ms, payload)
SELECT CASE WHEN g % 2 = 0 THEN '${p}big' ELSE '${p}' || ((g / 2) % 5000)::text END,
       'e1',
       CASE WHEN g % 2 = 0 THEN g / 2 ELSE (g / 2) / 5000 + 1 END,
       'user' || (g % 97)::text,
       1700000000000 + g,
       -- about the size of the load tool's payload as MessagePack (never decoded here)
       decode(repeat('ab', 80), 'hex')
FROM generate_series(1, 1000000) AS g;
ANALYZE messages;
SQL
echo "filled 1,000,000 rows in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s; the table holds $(psql "$url" -Atc 'SELECT count(*) FROM messages') rows"
echo "PostgreSQL $(psql "$url" -Atc 'SHOW server_version'), shared_buffers $(psql "$url" -Atc 'SHOW shared_buffers')"

# `before` i64::MAX is what a first page (no `before`) binds (archive rows.rs, page_bounds).
for what in "first page|9223372036854775807" "deep page|1000"; do
  name=${what%%|*} before=${what##*|}
  echo
  echo "EXPLAIN (ANALYZE, BUFFERS), $name: room of 500,000, before $before, limit 100"
  psql "$url" -v ON_ERROR_STOP=1 -Atq <<SQL
PREPARE page(text, text, bigint, bigint) AS $QUERY;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE page('${p}big', 'e1', $before, 100);
SQL
done

# pgbench: one client, prepared statements (what sqlx sends), PAGES pages of 100 each.
pgq=$(echo "$QUERY" | sed 's/\$1/:room/; s/\$2/:epoch/; s/\$3/:before/; s/\$4/100/')
echo "$pgq;" >"$work/first.sql"
{ echo '\set before random(101, 500000)'; echo "$pgq;"; } >"$work/deep.sql"
{ echo '\set r random(0, 4999)'; echo "$pgq;" | sed "s/= :room/= '${p}' || :r/"; } >"$work/small.sql"
echo
for what in "first page of the room of 500,000|first|9223372036854775807" \
            "deep pages (random before) of the room of 500,000|deep|0" \
            "first page of a random room of 100|small|101"; do
  IFS='|' read -r name script before <<<"$what"
  (cd "$work" && pgbench -n -M prepared -c 1 -t "$pages" -f "$script.sql" -l --log-prefix="log-$script" \
    -D room="${p}big" -D epoch=e1 -D before="$before" "$url" >/dev/null 2>"$script.err") ||
    { cat "$work/$script.err" >&2; exit 1; }
  # Log lines: client transaction latency_us script epoch_s epoch_us.
  cat "$work/log-$script".* | awk '{ print $3 / 1000 }' | sort -n | awk -v name="$name" '
    { v[NR] = $1 } END {
      printf "%s: %d pages of 100: median %.3f ms, p99 %.3f ms, max %.3f ms\n",
        name, NR, v[int((NR - 1) * 0.5 + 1.5)], v[int((NR - 1) * 0.99 + 1.5)], v[NR] }'
done
