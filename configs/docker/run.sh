#!/usr/bin/env bash
# `make run`: the Dockerized pool (compose.yaml, images built by `make images`) in the
# foreground. Starts it, waits until every part is ready and the conference application has
# its bridge, prints where everything is, then follows the logs. On the way out (Ctrl-C, `make
# stop` from another shell, a part that does not come up) it removes every container and the
# network again.
#
# DEMO_COMPOSE: the compose command with project and file (set by the Makefile).
# RES_SCALE_DEMO_NET: the network's first three octets (default 10.250.53).
# RES_SCALE_DEMO_READY_TIMEOUT: seconds the pool has to come up (default 180).
set -euo pipefail
: "${DEMO_COMPOSE:?run through make run (it sets DEMO_COMPOSE)}"
NET=${RES_SCALE_DEMO_NET:-10.250.53}
READY_TIMEOUT=${RES_SCALE_DEMO_READY_TIMEOUT:-180}
GATEWAY=http://$NET.30:8088
CLIENT=app:demo-app-secret

# $DEMO_COMPOSE is a command line ("docker compose -p ..."): split on purpose.
compose() { $DEMO_COMPOSE "$@"; }

removed=0
remove() {
    [ "$removed" = 1 ] && return
    removed=1
    # A second Ctrl-C must not cut the removal short (compose inherits the ignored SIGINT).
    trap '' INT
    echo "run: removing the pool's containers and network..."
    compose down --remove-orphans --timeout 5 || true
}
trap remove EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

echo "run: starting the pool on network res-scale-demo ($NET.0/24)..."
# Compose starts each part once the ones it depends on are healthy (compose.yaml).
if ! timeout "$READY_TIMEOUT" $DEMO_COMPOSE up -d --no-build; then
    echo "run: the pool did not start; the last lines of each part:" >&2
    compose ps >&2 || true
    compose logs --no-color --tail=20 >&2 || true
    exit 1
fi

# Ready for callers: the conference application is connected through the gateway and has made
# its bridge (GET /ari/bridges/conf answers 200).
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until curl -fsS --noproxy '*' -o /dev/null -u "$CLIENT" "$GATEWAY/ari/bridges/conf" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "run: the conference application has no bridge conf after ${READY_TIMEOUT}s:" >&2
        compose logs --no-color --tail=30 gateway conference >&2 || true
        exit 1
    fi
    sleep 0.5
done
ready=$(elapsed)

cat <<EOF

==== res_scale pool: ready in ${ready} s ====
Call in      sip:8000@$NET.20:5060   (Kamailio, round robin to node1 and node2;
             8000 = the conference, 8001 = echo test). \`make call\` places two SIPp callers.
Phones       register alice, bob, 1001 or 1002 with Kamailio (sip:$NET.20:5060, no password):
             every node learns the registration; dial the name or number to call them.
Busy lamps   SUBSCRIBE to sip:1001@$NET.20 (Event: dialog) at Kamailio for 1001's lamp
             (node1 publishes 1001 and alice, node2 1002 and bob).
ARI          $GATEWAY/ari   user app, password demo-app-secret
             (scale-gateway: the pool as one Asterisk; events ws://$NET.30:8088/ari/events?app=<name>,
             health $GATEWAY/healthz, metrics $GATEWAY/metrics)
Conference   ARI application "conference", bridge "conf": docker logs -f res-scale-demo-conference
node1        sip:$NET.21:5060  ARI http://$NET.21:8088/ari (scale-gateway / demo-ari-secret)
             CLI: docker exec -it res-scale-demo-node1 asterisk -r
node2        sip:$NET.22:5060  ARI http://$NET.22:8088/ari (scale-gateway / demo-ari-secret)
             CLI: docker exec -it res-scale-demo-node2 asterisk -r
Consul       UI http://$NET.10:8500/ui/  (API: /v1/health/service/asterisk, /v1/kv/res_scale/apps/?recurse)
RabbitMQ     amqp://res_scale:demo-amqp-secret@$NET.11:5672/%2f
             management http://$NET.11:15672 (res_scale / demo-amqp-secret)

The pool as node1 sees it (scale show nodes):
EOF
docker exec res-scale-demo-node1 asterisk -rx 'scale show nodes' || true
echo "Logs follow. Ctrl-C (or \`make stop\` elsewhere) removes every container and the network."
echo

# Until Ctrl-C, or until the containers are gone (`make stop`).
compose logs -f --no-color --tail=0 || true
