#!/usr/bin/env bash
# Creates (or updates) the RabbitMQ user of one part of a res_scale pool, with the least
# permissions that part needs on the vhost (README, "Trust on the bus"):
#
#   configs/rabbitmq/grant.sh node|kamailio|app USER PASSWORD [VHOST]
#
#   node      an Asterisk node with res_scale: declares the res_scale.* exchanges and its own
#             queues (res_scale.registrations.<node ID>, res_scale.state.<node ID>), publishes
#             to the exchanges and (SYNC answers) through the default exchange to other nodes'
#             queues, reads the registrations and state exchanges and its queues.
#   kamailio  Kamailio's registrar: publishes to res_scale.registrations, nothing else.
#   app       a consumer of Stasis events: its own server-named queues, bound to
#             res_scale.events; it can write to no exchange, so it can inject nothing.
#
# RABBITMQCTL overrides the command (e.g. "rabbitmqctl -n rabbit@host").
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 node|kamailio|app USER PASSWORD [VHOST]" >&2
    exit 2
fi
role=$1 user=$2 password=$3 vhost=${4:-/}
own_queues='amq\.gen-.*'
case $role in
    node)
        configure="^res_scale\\..*\$"
        write="^(res_scale\\..*|amq\\.default)\$"
        read="^res_scale\\.(registrations|state)(\\..*)?\$"
        ;;
    kamailio)
        configure='^$'
        write='^res_scale\.registrations$'
        read='^$'
        ;;
    app)
        configure="^$own_queues\$"
        write="^$own_queues\$"
        read="^(res_scale\\.events|$own_queues)\$"
        ;;
    *)
        echo "$0: unknown role '$role' (node, kamailio or app)" >&2
        exit 2
        ;;
esac

read -r -a ctl <<<"${RABBITMQCTL:-rabbitmqctl}"
if ! "${ctl[@]}" add_user "$user" "$password" >/dev/null 2>&1; then
    "${ctl[@]}" change_password "$user" "$password" >/dev/null
fi
"${ctl[@]}" set_permissions -p "$vhost" "$user" "$configure" "$write" "$read" >/dev/null
echo "$user: configure '$configure', write '$write', read '$read' on vhost '$vhost'"
