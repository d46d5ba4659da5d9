# What the bench scripts read of a process from /proc: its CPU time, its workers'
# scheduling policies (sourced by benches/rig.sh and benches/load.sh).

# utime+stime of process PID (all its threads), in clock ticks; fails when it is gone.
cpu_ticks() { # PID
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo "process $1 is gone" >&2; return 1; }
    # Fields after the ")" closing comm (which may hold spaces): utime is field 14, stime 15.
    echo "${stat##*) }" | awk '{print $12 + $13}'
}

# The same for a process and its children (an nginx master and its workers); a child
# that ends meanwhile counts 0.
cpu_ticks_tree() { # PID
    local t c
    t="$(cpu_ticks "$1")" || return 1
    for c in $(pgrep -P "$1" || true); do
        t=$((t + $(cpu_ticks "$c" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

# The scheduling policy of each proxy worker thread of process PID (field 41 of its
# stat: 0 SCHED_OTHER, 3 SCHED_BATCH), one per line.
worker_policies() { # PID
    local t stat
    for t in /proc/"$1"/task/*; do
        [[ "$(cat "$t/comm" 2>/dev/null)" == keygate-proxy* ]] || continue
        stat="$(cat "$t/stat" 2>/dev/null)" || continue
        echo "${stat##*) }" | awk '{print $39}'
    done
}
