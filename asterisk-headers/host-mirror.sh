# Sourced by fetch-headers.sh and tests/provision.sh: the Debian mirror from the host's own apt
# sources (deb822 first, then sources.list), so that nothing names a mirror of its own.
# host_mirror prints "URI SIGNED_BY" (SIGNED_BY may be empty). Override: RES_SCALE_DEBIAN_MIRROR.
host_mirror() {
    if [ -n "${RES_SCALE_DEBIAN_MIRROR:-}" ]; then echo "$RES_SCALE_DEBIAN_MIRROR"; return; fi
    local f out
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        out=$(awk 'BEGIN{RS="";FS="\n"}
            { t=""; u=""; s=""; k=""; en="yes"
              for (i=1;i<=NF;i++) { l=$i
                if (l ~ /^Types:/) t=l; else if (l ~ /^URIs:/) u=l; else if (l ~ /^Suites:/) s=l
                else if (l ~ /^Signed-By:/) k=l; else if (l ~ /^Enabled:[[:space:]]*no/) en="no" }
              if (en=="yes" && t ~ /[[:space:]]deb([[:space:]]|$)/ && u != "" && s !~ /-security/) {
                sub(/^URIs:[[:space:]]*/,"",u); split(u,a,/[[:space:]]+/)
                sub(/^Signed-By:[[:space:]]*/,"",k); if (k !~ /^\//) k=""
                print a[1], k; exit } }' "$f")
        if [ -n "$out" ]; then echo "$out"; return; fi
    done
    if [ -r /etc/apt/sources.list ]; then
        out=$(awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
        if [ -n "$out" ]; then echo "$out"; return; fi
    fi
    return 1
}
