# `perf script -F tid,ip,sym -i perf.data | python3 pairs_attribution.py`: of the samples
# of kernel-floor's io_uring relay thread (stacks under io_uring_enter), the share under
# each named kernel function, and the commonest leaf functions. Wrote
# pairs_uring.attribution.txt.
import sys, collections
stacks, cur = [], []
for line in sys.stdin:
    line = line.strip()
    if not line:
        if cur:
            stacks.append(cur)
            cur = []
        continue
    cur.append(line)
if cur:
    stacks.append(cur)
print(collections.Counter(s[0].split()[0] for s in stacks).most_common(5))
def has(st, k):
    return any(k in l for l in st[1:])
relay = [s for s in stacks if has(s, 'io_uring_enter') or has(s, 'io_cqring_wait')]
print('relay samples', len(relay), 'of', len(stacks))
c = collections.Counter()
for s in relay:
    for k in ('schedule', 'finish_task_switch', 'io_cqring_wait', 'io_submit_sqes', 'io_send',
              'io_recv', 'net_rx_action', 'tcp_v4_rcv', 'sock_def_readable', 'try_to_wake_up',
              'tcp_ack', 'task_work', 'io_run_task_work', 'tctx_task_work', 'cpuidle', 'do_idle'):
        if has(s, k):
            c[k] += 1
for k, v in c.most_common():
    print(f'  {k}: {100 * v / len(relay):.1f}%')
leaf = collections.Counter(s[1].split(None, 1)[1] if len(s) > 1 else '?' for s in relay)
print(leaf.most_common(8))
