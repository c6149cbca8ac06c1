import sys, bisect, collections
d = sys.argv[1]
def load(f):
    ev = collections.defaultdict(dict); commits = []; begins = []
    for line in open(f"{d}/{f}"):
        p = line.split()
        if len(p) != 4: continue
        _, st, i, us = p; i = int(i); us = int(us)
        if st == 'pg_commit':
            q, rest = divmod(i, 10**12); body, cm = divmod(rest, 10**6)
            commits.append((us, q, body, cm))
        elif st == 'pg_begin':
            begins.append(us)
        else:
            ev[i][st] = us
    commits.sort(); begins.sort()
    return ev, commits, begins
co, commits, begins = load('coordinator.txt')
fw, _, _ = load('forwarder.txt')
bench = [l.split() for l in open(f"{d}/bench.txt")]
cend = [c[0] for c in commits]
def commit_before(t):
    k = bisect.bisect_right(cend, t) - 1
    return commits[k] if k >= 0 else None
def pct(v, q):
    v = sorted(v); return v[min(len(v)-1, round((len(v)-1)*q))]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for variant, froma, w0, w1, w2 in bench:
    w0, w1, w2 = int(w0), int(w1), int(w2)
    if variant != 'cross': continue
    if froma == 'true':
        key = 'coord->fwd'
        cand = [(e['fwd_delivered'], i) for i, e in fw.items() if 'fwd_delivered' in e and w0 <= e['fwd_delivered'] <= w2]
        if not cand: continue
        _, W = max(cand)
        e = dict(fw[W]); e.update(co.get(W, {}))
        c = commit_before(e['co_ran'])
        if not c: continue
        cend_us, q, body, cm = c
        cstart = cend_us - cm; bstart = cstart - body
        R = rows[key]
        R['t0 unlock sent -> BEGIN (HTTP, engine queue)'].append(bstart - w0)
        R['BEGIN -> COMMIT sent (%s queries)' % 'n'].append(body)
        R['queries in the transaction'].append(q)
        R['COMMIT round trip (fsync)'].append(cm)
        R['commit -> t1 unlock answered (local)'].append(w1 - cend_us)
        R['commit -> co_ran (grant reaches forwarded call task)'].append(e['co_ran'] - cend_us)
        R['co_ran -> co_answered (pool + UPDATE..pg_notify)'].append(e['co_answered'] - e['co_ran'])
        R['co_ran -> fwd_notified (answer written + NOTIFY delivered)'].append(e['fwd_notified'] - e['co_ran'])
        R['fwd_notified -> fwd_fetched (pool + SELECT)'].append(e['fwd_fetched'] - e['fwd_notified'])
        R['fwd_fetched -> fwd_delivered (to the waiting call)'].append(e['fwd_delivered'] - e['fwd_fetched'])
        R['fwd_delivered -> t2 (HTTP answer to client)'].append(w2 - e['fwd_delivered'])
        R['== commit -> t2 (true handoff)'].append(w2 - cend_us)
        R['== t1 -> t2 (measured, from unlock answered)'].append(w2 - w1)
    else:
        key = 'fwd->coord'
        cand = [(e['fwd_recv'], i) for i, e in fw.items() if 'fwd_recv' in e and w0 <= e['fwd_recv'] <= w1]
        if not cand: continue
        _, U = min(cand)
        e = dict(fw[U]); e.update(co.get(U, {}))
        c = commit_before(e['co_ran'])
        if not c: continue
        cend_us, q, body, cm = c
        cstart = cend_us - cm; bstart = cstart - body
        R = rows[key]
        R['t0 -> fwd_recv (HTTP to forwarder)'].append(e['fwd_recv'] - w0)
        R['fwd_recv -> fwd_inserted (pool + INSERT..pg_notify)'].append(e['fwd_inserted'] - e['fwd_recv'])
        R['fwd_recv -> co_notified (inserted + NOTIFY delivered)'].append(e['co_notified'] - e['fwd_recv'])
        R['co_notified -> co_taken (pool + UPDATE take)'].append(e['co_taken'] - e['co_notified'])
        R['co_taken -> BEGIN (engine queue)'].append(bstart - e['co_taken'])
        R['BEGIN -> COMMIT sent'].append(body)
        R['queries in the transaction'].append(q)
        R['COMMIT round trip (fsync)'].append(cm)
        R['commit -> t2 waiter answered (local)'].append(w2 - cend_us)
        R['commit -> t1 unlock answered via table (return path)'].append(w1 - cend_us)
        R['== commit -> t2 (true handoff)'].append(w2 - cend_us)
        R['== t0 -> t2 (measured, from unlock sent)'].append(w2 - w0)
        R['== t0 -> commit (forwarding in + engine)'].append(cend_us - w0)
for key, R in rows.items():
    n = len(next(iter(R.values())))
    print(f"\n{key}: {n} handoffs   (microseconds)")
    print(f"  {'stage':62s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s}")
    for k, v in R.items():
        print(f"  {k:62s} {pct(v,.5):7d} {pct(v,.9):7d} {pct(v,.99):7d} {max(v):7d}")
