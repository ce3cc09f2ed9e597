#!/usr/bin/env bash
# The "ha" Serf agent's event handler: the seed lab's member-join.sh and member-leave.sh in one
# script (`-event-handler member-join=... -event-handler member-leave,member-failed=...`).
#
# Serf runs it once per coalesced batch of member events, one at a time, with SERF_EVENT set and
# one member per stdin line: name<TAB>address<TAB>role<TAB>tag1=v1,tag2=v2.
# Like the lab: one file per backend node in nodes/, then the whole haproxy.cfg re-rendered from
# the template, then HAProxy restarted (a new process; the old one finishes its connections).
#
# `handler.sh reload` (no event) renders and starts HAProxy the first time, as the lab's s6
# service did when the ha container started.
#
# Environment, inherited from the ha agent (set by bench/serf.py):
#   SERF_LAB_DIR       per-run directory: nodes/, haproxy.cfg, haproxy.pid, serf.log
#   SERF_LAB_TEMPLATE  haproxy.cfg.tmpl
#   SERF_LAB_SOCKET    path of HAProxy's admin stats socket
#   SERF_LAB_FRONTEND  address:port of the traffic frontend
set -u
dir=$SERF_LAB_DIR
nodes=$dir/nodes
log=$dir/serf.log
stamp() { date +%H:%M:%S.%3N; }

changed=false
if [[ -n "${SERF_EVENT:-}" ]]; then
  echo "$(stamp) $SERF_EVENT handler triggered" >> "$log"
  while IFS=$'\t' read -r name address role tags; do
    # Only back ends: the ha agent's own join is an event too.
    [[ "$role" == backend ]] || continue
    case "$SERF_EVENT" in
      member-join)
        # The web app's port travels as the tag port=<n> (tags come in no particular order).
        port=""
        IFS=, read -ra pairs <<< "$tags"
        for pair in "${pairs[@]}"; do [[ "$pair" == port=* ]] && port=${pair#port=}; done
        [[ -n "$port" ]] || { echo "$(stamp) $name has no port tag: ignored" >> "$log"; continue; }
        echo "$name $address:$port" > "$nodes/$name"
        ;;
      member-leave|member-failed)
        rm -f "$nodes/$name"
        ;;
      *) continue ;;
    esac
    echo "$(stamp) $SERF_EVENT: $name $address" >> "$log"
    changed=true
  done
elif [[ "${1:-}" == reload ]]; then
  changed=true
fi
[[ "$changed" == true ]] || exit 0

# Render: the node files (sorted, as `ls /nodes` listed them in the lab), then the template.
shopt -s nullglob
files=("$nodes"/*)
cat /dev/null "${files[@]}" > "$dir/nodes.list"
awk -v socket="$SERF_LAB_SOCKET" -v frontend="$SERF_LAB_FRONTEND" '
  FILENAME == ARGV[1] { n++; name[n] = $1; address[n] = $2; next }
  /\{\{#each nodes\}\}/ { inside = 1; size = 0; next }
  /\{\{\/each\}\}/ {
    for (i = 1; i <= n; i++) for (j = 1; j <= size; j++) {
      line = block[j]; gsub(/\{\{name\}\}/, name[i], line); gsub(/\{\{address\}\}/, address[i], line); print line
    }
    inside = 0; next
  }
  inside { block[++size] = $0; next }
  { gsub(/\{\{socket\}\}/, socket); gsub(/\{\{frontend\}\}/, frontend); print }
' "$dir/nodes.list" "$SERF_LAB_TEMPLATE" > "$dir/haproxy.cfg"

# Restart the lab's way: a new daemon, told to make the old one (-sf) finish and exit. Its output
# goes to the log, never to Serf's pipes (Serf waits for those to close).
old=$(cat "$dir/haproxy.pid" 2>/dev/null)
if haproxy -D -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg" ${old:+-sf $old} < /dev/null >> "$log" 2>&1; then
  echo "$(stamp) haproxy restarted: pid $(cat "$dir/haproxy.pid"), ${#files[@]} server(s)" >> "$log"
else
  echo "$(stamp) haproxy failed to start; the old one (${old:-none}) keeps running" >> "$log"
fi
