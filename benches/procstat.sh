# CPU time of processes from /proc, for the bench scripts (sourced by benches/rig.sh
# and benches/load.sh).

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
