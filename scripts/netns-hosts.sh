#!/usr/bin/env bash
# Test hosts on one machine: Linux network namespaces on one bridge, each with its own address,
# and the faults a network has. Needs root and iproute2 (iptables and tc for `loss` and `rate`).
#
#   scripts/netns-hosts.sh up N          hosts pp-h0..pp-h<N-1> at 10.77.0.10+i/24, and this
#                                        machine at 10.77.0.1 on the same bridge (the operator)
#   scripts/netns-hosts.sh down          remove every host, the bridge and the operator link
#   scripts/netns-hosts.sh link I down|up   cut or restore host I's link (its switch port)
#   scripts/netns-hosts.sh loss P        drop each packet a host receives with probability P
#                                        (iptables `statistic`; this kernel has no netem)
#   scripts/netns-hosts.sh rate I RATE   limit host I's outgoing bandwidth (tc tbf, e.g. 10mbit)
#   scripts/netns-hosts.sh clear         remove every loss rule and bandwidth limit
#   scripts/netns-hosts.sh addr I        print host I's address
#
# Run a command on host I with `ip netns exec pp-h<I> CMD`. The bridge lives in its own
# namespace (pp-sw), so the machine's own firewall (Docker's FORWARD policy, say) never sees
# the hosts' traffic. Latency is not added here: the multi-host test puts a delay proxy
# (the `delay-proxy` test helper) in front of each process instead.
set -euo pipefail

SWITCH=pp-sw
PREFIX=10.77.0

addr() { echo "$PREFIX.$((10 + $1))"; }
hosts() { ip netns list | awk '{print $1}' | grep -E '^pp-h[0-9]+$' || true; }

up() {
    local n=$1
    down
    ip netns add "$SWITCH"
    ip -n "$SWITCH" link add br0 type bridge
    ip -n "$SWITCH" link set br0 up
    ip -n "$SWITCH" link set lo up
    # The operator: this machine's own end on the bridge, so a test here reaches every host.
    ip link add pp-op type veth peer name op netns "$SWITCH"
    ip -n "$SWITCH" link set op master br0 up
    ip addr add "$PREFIX.1/24" dev pp-op
    ip link set pp-op up
    for i in $(seq 0 $((n - 1))); do
        local host=pp-h$i
        ip netns add "$host"
        ip -n "$host" link set lo up
        ip link add "h$i" netns "$SWITCH" type veth peer name eth0 netns "$host"
        ip -n "$SWITCH" link set "h$i" master br0 up
        ip -n "$host" addr add "$(addr "$i")/24" dev eth0
        ip -n "$host" link set eth0 up
    done
}

down() {
    for host in $(hosts); do ip netns del "$host"; done
    ip link del pp-op 2>/dev/null || true
    if ip netns list | grep -qw "$SWITCH"; then ip netns del "$SWITCH"; fi
}

link() { ip -n "$SWITCH" link set "h$1" "$2"; }

loss() {
    for host in $(hosts); do
        ip netns exec "$host" iptables -A INPUT -m statistic --mode random \
            --probability "$1" -j DROP
    done
}

rate() {
    ip netns exec "pp-h$1" tc qdisc replace dev eth0 root tbf rate "$2" burst 64kbit \
        latency 400ms
}

clear() {
    for host in $(hosts); do
        ip netns exec "$host" iptables -F INPUT
        ip netns exec "$host" tc qdisc del dev eth0 root 2>/dev/null || true
    done
}

case "${1:-}" in
    up) up "${2:?up N}" ;;
    down) down ;;
    link) link "${2:?link I down|up}" "${3:?link I down|up}" ;;
    loss) loss "${2:?loss P}" ;;
    rate) rate "${2:?rate I RATE}" "${3:?rate I RATE}" ;;
    clear) clear ;;
    addr) addr "${2:?addr I}" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
