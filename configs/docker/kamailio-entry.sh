#!/bin/sh
# Starts Kamailio in front of the Dockerized pool with configs/kamailio/kamailio.cfg, unmodified:
# the settings are -A defines. RES_SCALE_NODES lists the nodes' SIP addresses (host:port,
# separated by spaces); AMQP_URL is the broker Kamailio publishes registrations to.
set -eu
: "${RES_SCALE_NODES:?RES_SCALE_NODES must list the nodes (host:port ...)}"
: "${AMQP_URL:?AMQP_URL must name the broker}"
name=$(cat /etc/hostname)
addr=$(getent hosts "$name" | awk '{ print $1; exit }')
if [ -z "$addr" ]; then
    echo "kamailio-entry: no address for host name $name" >&2
    exit 1
fi
run=/run/kamailio
mkdir -p "$run"
{
    echo "# setid destination flags priority (written by kamailio-entry from RES_SCALE_NODES)"
    for node in $RES_SCALE_NODES; do
        echo "1 sip:$node 0 0"
    done
} > "$run/dispatcher.list"
echo "kamailio-entry: SIP udp:$addr:5060, dispatching to $RES_SCALE_NODES"
exec kamailio -f /etc/kamailio/kamailio.cfg -DD -E -Y "$run" -P "$run/kamailio.pid" \
    -A "SIP_LISTEN=udp:$addr:5060" \
    -A "AMQP_URL=\"$AMQP_URL\"" \
    -A "REGISTRAR_ID=\"$name\"" \
    -A "DISPATCHER_LIST=\"$run/dispatcher.list\"" \
    -A "CTL_SOCKET=\"unix:$run/kamailio_ctl\""
