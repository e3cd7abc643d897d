#!/bin/sh
# Starts a node of the Dockerized pool. What differs from node to node is written into the two
# files that configs/asterisk includes, from the container's host name and address; then
# Asterisk runs in the foreground (docker stop sends SIGTERM: Asterisk stops, res_scale leaves
# Consul).
set -eu
name=$(cat /etc/hostname)
addr=$(getent hosts "$name" | awk '{ print $1; exit }')
if [ -z "$addr" ]; then
    echo "asterisk-entry: no address for host name $name" >&2
    exit 1
fi
echo "systemname = $name" > /etc/asterisk/asterisk_node.conf
printf 'sip_address = %s:5060\nari_url = http://%s:8088/ari\n' "$addr" "$addr" > /etc/asterisk/res_scale_node.conf
# Busy lamps: this node PUBLISHes the hints whose extension matches RES_SCALE_BLF_EXTEN (a
# regex; each extension on exactly one node) to Kamailio, at the address the phones use.
if [ -n "${RES_SCALE_BLF_EXTEN:-}" ]; then
    kamailio=$(getent hosts kamailio | awk '{ print $1; exit }')
    if [ -z "$kamailio" ]; then
        echo "asterisk-entry: no address for host name kamailio (busy lamps)" >&2
        exit 1
    fi
    printf '[blf](blf-publisher)\nserver_uri = sip:%s:5060\nfrom_uri = sip:%s:5060\n@exten = %s\n' \
        "$kamailio" "$kamailio" "$RES_SCALE_BLF_EXTEN" > /etc/asterisk/pjsip_blf.conf
    echo "asterisk-entry: busy lamps of extensions $RES_SCALE_BLF_EXTEN published to $kamailio:5060"
else
    rm -f /etc/asterisk/pjsip_blf.conf
fi
echo "asterisk-entry: $name at $addr (SIP $addr:5060, ARI http://$addr:8088/ari)"
# -n: no terminal colours in the container's log.
exec /usr/sbin/asterisk -f -n
