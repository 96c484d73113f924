# Helpers shared by the benchmark scripts (tests/bench/router, tests/bench/longrun). Source it
# after setting: root (the repository), work (the work directory), build (the Release build
# directory), and, for the Kafka helpers, brokers and partitions; sinks' pids go in variables
# the caller names. Defines log with the prefix $bench_name (default "bench").

log() { printf '[%s %s] %s\n' "${bench_name:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }

stop_pid() {  # stop_pid PID [SECONDS]: TERM, then KILL after SECONDS (default 15)
  local p=$1 n=$(( ${2:-15} * 4 ))
  [ -n "$p" ] || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 "$n"); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
}

# bench_build TARGETS...: a Release build of TARGETS in $build (log in $work/cmake.log)
bench_build() {
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 \
    || { cat "$work/cmake.log" >&2; exit 1; }
  cmake --build "$build" -j"$(nproc)" --target "$@" >>"$work/cmake.log" 2>&1 \
    || { tail -n 40 "$work/cmake.log" >&2; exit 1; }
}

# bench_services: a single-node Kafka in $work/kafka and a throwaway Postgres in $work/pg;
# sets brokers, broker_pid, dsn and pg_data. bench_services_stop stops them.
bench_services() {
  log "starting a single-node Kafka"
  brokers=$("$root/scripts/kafka-local" start --dir "$work/kafka" --nodes 1 | tail -n 1)
  broker_pid=$(cat "$work/kafka/node1/pid")
  log "kafka at $brokers; starting a throwaway Postgres"
  dsn=$("$root/scripts/pg-local" start --dir "$work/pg" | tail -n 1)
  pg_data=$(find "$work/pg" -maxdepth 3 -name postmaster.pid -printf '%h\n' 2>/dev/null | head -n 1)
}
bench_services_stop() {
  [ -d "$work/kafka" ] && "$root/scripts/kafka-local" stop --dir "$work/kafka" >/dev/null 2>&1 || true
  [ -d "$work/pg" ] && "$root/scripts/pg-local" stop --dir "$work/pg" >/dev/null 2>&1 || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_sink VAR PORT ARGS...: a sluice-bench-sink ($sink) on PORT, its pid in VAR
start_sink() {
  local var=$1 port=$2; shift 2
  rm -f "$work/sink-$port.port"
  "$sink" --port "$port" --port-file "$work/sink-$port.port" "$@" >>"$work/sinks.log" 2>&1 &
  printf -v "$var" %s $!
  for _ in $(seq 1 40); do [ -s "$work/sink-$port.port" ] && return 0; sleep 0.05; done
  log "sluice-bench-sink did not start on port $port"; cat "$work/sinks.log" >&2; exit 1
}

create_topic() {
  "$root/scripts/kafka-local" tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" \
    --create --if-not-exists --topic "$1" --partitions "$partitions" --replication-factor 1 \
    >"$work/topic-$1.log" 2>&1 || { cat "$work/topic-$1.log" >&2; exit 1; }
}
topic_count() {
  "$root/scripts/kafka-local" tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$brokers" \
    --topic "$1" 2>>"$work/offsets.log" | awk -F: '{ n += $NF } END { print n + 0 }'
}

# wait_healthy PID PORT LOG NAME: until http://127.0.0.1:PORT/health answers (60 s at most)
wait_healthy() {
  local pid=$1 port=$2 logf=$3 name=$4 i
  for i in $(seq 1 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { log "$name exited"; tail -n 30 "$logf" >&2; exit 1; }
    [ "$i" = 120 ] && { log "$name did not become healthy in 60 s"; tail -n 30 "$logf" >&2; exit 1; }
    sleep 0.5
  done
}
