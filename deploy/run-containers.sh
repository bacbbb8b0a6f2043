#!/usr/bin/env bash
# The 8-worker topology as containers of one image on one private Docker network: a
# coordinator (--nodes 8), 2 learners, 5 actors and a tool-server, each reached by its container
# name. Once training runs, one actor container is stopped and another is disconnected from the
# network; the run goes on and completes. Prints what it saw. Every process runs with mutual TLS:
# the image's `coordinator certs` makes the run's certificates, and each container mounts its
# role's read-only.
#
#   deploy/run-containers.sh [IMAGE] [STEPS]     (default paretopo:latest, 60)
#
# Needs a running Docker engine and the image (deploy/build-image.sh), and curl.
set -euo pipefail

image=${1:-paretopo:latest}
steps=${2:-60}
net=paretopo-net
work=$(mktemp -d)
names=(coordinator learner-0 learner-1 actor-0 actor-1 actor-2 actor-3 actor-4 tool-server)

cleanup() {
    for n in "${names[@]}"; do docker rm -f "paretopo-$n" >/dev/null 2>&1 || true; done
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_quiet() { for n in "${names[@]}"; do docker rm -f "paretopo-$n" >/dev/null 2>&1 || true; done; }
cleanup_quiet
docker network rm "$net" >/dev/null 2>&1 || true
mkdir -p "$work/run"
cat >"$work/run.toml" <<EOF
[run]
name = "containers"
dir = "/var/lib/paretopo/run"

[cluster]
coordinator_address = "paretopo-coordinator:7000"
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 3000

[algorithm]
total_steps = $steps
warm_start_steps = 10
eval_questions = 4
groups_per_step = 2
group_size = 4
token_budget = 48
checkpoint_every = 20

[learner]
collective_port = 7001
weights_port = 7002
EOF
# The image runs as uid 10001; the run directory is this machine's, shared by all.
chown -R 10001:10001 "$work"
docker run --rm -v "$work:/work" "$image" coordinator certs --out /work/tls --run-name containers >/dev/null
docker network create "$net" >/dev/null

start() {
    local name=$1 binary=$2
    shift 2
    docker run -d --name "paretopo-$name" --hostname "paretopo-$name" --network "$net" \
        -v "$work/run.toml:/etc/paretopo/run.toml:ro" -v "$work/run:/var/lib/paretopo/run" \
        -v "$work/tls/$binary:/etc/paretopo-tls:ro" \
        --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
        "$image" "$binary" --config /etc/paretopo/run.toml --listen 0.0.0.0:7000 \
        --metrics-listen 0.0.0.0:9100 --tls-dir /etc/paretopo-tls "$@" >/dev/null
}

# A value of the coordinator's metrics, read from this machine through the network.
metric() {
    local ip
    ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" paretopo-coordinator)
    curl -sf --cacert "$work/tls/ca.crt" --cert "$work/tls/operator/tls.crt" \
        --key "$work/tls/operator/tls.key" --resolve "coordinator.paretopo:9100:$ip" \
        "https://coordinator.paretopo:9100/metrics" | awk -v m="$1" '$1 == m {print $2}' | cut -d. -f1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq 1 $((limit * 2))); do
        if "$@"; then return 0; fi
        sleep 0.5
    done
    echo "run-containers: timed out waiting for $what" >&2
    docker logs --tail 20 paretopo-coordinator >&2
    return 1
}

began=$(date +%s)
start coordinator coordinator --nodes 8 --learners 2 --actors 5 --tool-servers 1
wait_for 30 "the coordinator" bash -c "[ -n \"\$(docker logs paretopo-coordinator 2>&1 | grep serving)\" ]"
start tool-server tool-server
for i in 0 1; do start "learner-$i" learner --set "learner.index=$i"; done
for i in 0 1 2 3 4; do start "actor-$i" actor; done

wait_for 120 "all 8 registered" bash -c "[ \"\$(docker logs paretopo-coordinator 2>&1 | grep -c ' registered ')\" -ge 8 ]"
step_at() { [ "$(metric paretopo_coordinator_step)" -ge "$1" ] 2>/dev/null; }
wait_for 300 "step 5" step_at 5
by_name=$(docker logs paretopo-coordinator 2>&1 | grep ' registered ' | grep -c 'address=paretopo-')
if [ "$by_name" -lt 8 ]; then
    echo "run-containers: only $by_name of 8 workers advertised their container name" >&2
    exit 1
fi
echo "run-containers: $by_name workers registered, each advertising its container name; step $(metric paretopo_coordinator_step) of $steps"

docker stop -t 2 paretopo-actor-0 >/dev/null
docker network disconnect "$net" paretopo-actor-1
faulted=$(date +%s)
lost_two() { [ "$(metric paretopo_coordinator_nodes_lost)" -ge 2 ] 2>/dev/null; }
wait_for 30 "two actors marked lost" lost_two
detected=$(( $(date +%s) - faulted ))
at_fault=$(metric paretopo_coordinator_step)
echo "run-containers: actor-0 stopped and actor-1 disconnected at step $at_fault; both lost after ${detected} s"

done_run() { [ "$(docker inspect -f '{{.State.Status}}' paretopo-learner-0)" = exited ]; }
wait_for 900 "the learners to finish" done_run
code=$(docker inspect -f '{{.State.ExitCode}}' paretopo-learner-0)
final=$(metric paretopo_coordinator_step)
seconds=$(( $(date +%s) - began ))
echo "run-containers: learner-0 exited $code at step $final of $steps (step $at_fault at the faults), ${seconds} s in all"
digests=$(for i in 0 1; do
    docker logs "paretopo-learner-$i" 2>&1 | grep 'final parameters' | grep -o 'digest=[0-9a-f]*'
done | sort -u)
echo "run-containers: final parameters of both learner ranks: $(echo "$digests" | tr '\n' ' ')"
image_size=$(docker image inspect -f '{{.Size}}' "$image")
echo "run-containers: image $image is $((image_size / 1000000)) MB"
[ "$code" = 0 ] && [ "$final" = "$steps" ] && [ "$(echo "$digests" | wc -l)" = 1 ]
