#!/usr/bin/env bash
# Runs the built image as production would: the records service, the notifier and a mail
# catcher, each its own container with a read-only filesystem (and a tmpfs at /tmp, as the
# Kubernetes manifests give records an emptyDir), against an existing PostgreSQL. Then it builds
# a small plan over HTTP and waits for the small-win email. Exit 0 only when every check passed.
#
#   docker build -f deploy/Dockerfile -t casetrail:0.1.0 .
#   DATABASE_URL=postgresql://postgres@127.0.0.1:5432/casetrail_smoke deploy/smoke-test.sh
#
# The containers use the host's network, so DATABASE_URL is as the host sees it. The database
# must exist; the services migrate it at start. Needs docker, curl and python3 on the host.
set -euo pipefail

IMAGE=${IMAGE:-casetrail:0.1.0}  # the release's version, as in kubernetes/
RECORDS_PORT=${RECORDS_PORT:-18080}
NOTIFIER_PORT=${NOTIFIER_PORT:-18081}
SMTP_PORT=${SMTP_PORT:-11025}
: "${DATABASE_URL:?set DATABASE_URL to a database the services may migrate}"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
RUN_ID=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:8])')
API=http://127.0.0.1:$RECORDS_PORT
NOTIFIER=http://127.0.0.1:$NOTIFIER_PORT
CONTAINERS=()

cleanup() {
  for name in "${CONTAINERS[@]}"; do docker rm -f "$name" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

fail() {
  echo "FAILED: $*" >&2
  for name in "${CONTAINERS[@]}"; do echo "--- $name" >&2; docker logs --tail 30 "$name" >&2 || true; done
  exit 1
}

start() {  # start NAME ARGS...: a detached, read-only container on the host network
  local name=casetrail-smoke-$1-$RUN_ID
  shift
  CONTAINERS+=("$name")
  docker run -d --name "$name" --network host --read-only --tmpfs /tmp \
    -e DATABASE_URL="$DATABASE_URL" -e CASETRAIL_JWT_SECRET="$SECRET" "$@" >/dev/null
}

wait_ready() {  # wait_ready URL: up to 60 s for /readyz to answer 200
  for _ in $(seq 120); do
    curl -sf "$1/readyz" >/dev/null && return 0
    sleep 0.5
  done
  fail "$1/readyz never answered 200"
}

token() {  # token SUB ROLE: a development token signed by the image's own CLI
  docker run --rm -e CASETRAIL_JWT_SECRET="$SECRET" "$IMAGE" \
    token --sub "$1" --role "$2" --agency "agency-$RUN_ID"
}

field() { python3 -c 'import json,sys; print(json.load(sys.stdin)["'"$1"'"])'; }

post() {  # post PATH BODY: a case manager's write; prints the answer, fails on a non-2xx
  curl -sf -X POST "$API$1" -H "$AUTH" -H 'Content-Type: application/json' -d "$2" \
    || fail "POST $1 was refused"
}

start catcher -e PYTHONUNBUFFERED=1 --entrypoint python "$IMAGE" \
  -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Debugging
start records "$IMAGE" records --host 127.0.0.1 --port "$RECORDS_PORT"
wait_ready "$API"
start notifier -e RECORDS_URL="$API" -e SMTP_HOST=127.0.0.1 -e SMTP_PORT="$SMTP_PORT" \
  "$IMAGE" notifier --host 127.0.0.1 --port "$NOTIFIER_PORT"
wait_ready "$NOTIFIER"

for name in "${CONTAINERS[@]}"; do
  [ "$(docker exec "$name" id -u)" = 10001 ] || fail "$name does not run as the casetrail user"
done

MANAGER=cm-$RUN_ID
AUTH="Authorization: Bearer $(token "$MANAGER" case_manager)"
curl -sf -X PUT "$NOTIFIER/v1/preferences/$MANAGER" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"email": "'"$MANAGER"'@example.org", "delivery": "immediate", "timezone": "UTC",
       "celebrations": true}' >/dev/null || fail "the notifier refused the preferences"

CASE=$(post /v1/cases '{"participant": {"name": "Sam Rivera"}, "case_manager": "'"$MANAGER"'",
  "risk_level": "low"}' | field case_id)
GOAL=$(post "/v1/cases/$CASE/goals" '{"title": "Find a quieter flat", "domain": "housing",
  "source": "participant", "in_their_words": "Somewhere I can sleep"}' | field id)
STEP=$(post "/v1/cases/$CASE/goals/$GOAL/steps" '{"description": "Visit the housing office",
  "owner": "participant"}' | field id)
post "/v1/cases/$CASE/steps/$STEP/complete" '{}' >/dev/null
[ "$(curl -sf "$API/v1/cases/$CASE/verify" -H "$AUTH" | field valid)" = True ] \
  || fail "the case's hash chain does not verify"

for _ in $(seq 60); do
  if docker logs "casetrail-smoke-catcher-$RUN_ID" 2>&1 | grep -q "$MANAGER@example.org"; then
    docker logs "casetrail-smoke-catcher-$RUN_ID" 2>&1 | grep -m1 '^Subject:'
    echo "PASSED: $IMAGE served case $CASE and the notifier mailed its small win"
    exit 0
  fi
  sleep 0.5
done
curl -s "$NOTIFIER/v1/notifications?case_id=$CASE" -H "$AUTH" >&2 || true
fail "no small-win email reached the catcher within 30 s"
