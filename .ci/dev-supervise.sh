# Sourced by the justfile's `dev` and `dev-single` recipes (bash scripts that just runs):
# stops every process the recipe starts, all together, however it is asked to stop.
#
# - Ctrl-C in a terminal reaches the whole process group: just, the recipe's script and
#   every process it started. just waits for the script; its INT trap stops the rest.
# - SIGTERM to just alone: just passes it on to the script (the TERM trap).
# - SIGINT, SIGHUP or SIGQUIT to just alone, as an IDE's stop button or a supervisor sends
#   it: just does NOT pass these on. It waits for its child to end instead, which here is
#   never ("Signal Handling" in just's manual). just's "signal handler" thread, though,
#   reads one byte from a pipe for every signal just gets (SIGHUP, SIGINT, SIGQUIT,
#   SIGTERM: all of them mean stop), so `dev_watch_just` watches that thread's count of
#   bytes read (rchar in /proc/<just>/task/<thread>/io): when it moves, the watcher sends
#   the process group the SIGINT a terminal's Ctrl-C would have, and all stops as above.
#   (A SIGSTOP/SIGCONT, Ctrl-Z then fg, reads nothing and is not mistaken for one.)
# - just gone (killed outright): the watcher sees the script reparented, and does the same.
# - Any one process ending (a crash) ends the recipe's `wait -n`; the EXIT trap stops the
#   others.
#
# `kill 0` signals the script's process group: just's own, given to it by the terminal's
# job control (or by setsid, as apps/web/e2e/e2e.mjs starts it). Start `just dev` in a
# group of its own when an IDE or supervisor runs it.

dev_stop_all() {
    trap '' INT TERM
    trap - EXIT
    kill 0 2>/dev/null
    wait
    # And whatever was started in the meantime (a build tool of trunk's, say).
    kill 0 2>/dev/null
}
trap 'dev_stop_all; exit 130' INT
trap 'dev_stop_all; exit 143' TERM
trap dev_stop_all EXIT

# Run in the background: `dev_watch_just &`. It ends only to stop everything.
dev_watch_just() {
    set +e
    local just=$PPID io="" task before="" stat
    for task in /proc/"$just"/task/*; do
        [ "$(cat "$task/comm" 2>/dev/null)" = "signal handler" ] && io=$task/io
    done
    rchar() { grep -s '^rchar:' "$io"; }
    [ -n "$io" ] && before=$(rchar)
    if [ -z "$before" ]; then
        echo "dev: cannot see the signals just gets; stop with Ctrl-C or SIGTERM" >&2
    fi
    while read -r -a stat </proc/$$/stat && [ "${stat[3]}" = "$just" ]; do
        [ -z "$before" ] || [ "$(rchar)" = "$before" ] || break
        sleep 0.5
    done
    kill -INT 0
}
