#!/bin/bash
# Leaf-symbol profile of a `perf record -g -p <daemon pid>` capture of a release airlock
# (BENCHMARKS.md, "Issue 16"). perf on this machine printed raw offsets for the binary; this
# resolves them with addr2line (text segment offset + 0x1000 = address; check `readelf -lW`).
# usage: perf-leaf-symbols.sh perf.data path/to/airlock [thread-name] [rows]
set -e
tmp=$(mktemp -d)
perf script -i "$1" -F comm,ip,dso 2>/dev/null | awk -v want="$3" '
/^[^ \t]/ {comm=$1; leaf=1; next}
/^[ \t]+[0-9a-f]+ / { if (leaf) { if (want=="" || comm==want) print $1, $2; leaf=0 } }' > "$tmp/leaves"
total=$(wc -l < "$tmp/leaves")
grep "airlock)" "$tmp/leaves" | awk '{print $1}' | sort | uniq -c | sort -rn > "$tmp/hot"
python3 -c "import sys; [print(hex(int(l.split()[1],16)+4096)) for l in open('$tmp/hot')]" \
    | addr2line -f -C -e "$2" | awk 'NR%2==1' > "$tmp/names"
echo "total samples: $total"
paste -d' ' <(awk '{print $1}' "$tmp/hot") "$tmp/names" \
    | awk -v t="$total" '{n=$1; $1=""; c[$0]+=n} END {for (k in c) printf "%5.2f%% %s\n", 100*c[k]/t, k}' \
    | sort -rn | head -"${4:-40}"
rm -rf "$tmp"
