# Splits `perf script -F tid,ip,sym` samples of kernel-floor into the sender (under
# io_uring_enter or sendto) and the receiver (under recvfrom or epoll_wait), and prints
# the share of each side's samples under the named kernel functions.
import sys
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
def has(st, s):
    return any(s in l for l in st[1:])
snd = [s for s in stacks if has(s, 'io_uring_enter') or has(s, '__x64_sys_sendto')]
rcv = [s for s in stacks if has(s, 'recvfrom') or has(s, 'epoll_wait')]
print('samples', len(stacks), 'sender', len(snd), 'receiver', len(rcv))
for name, grp in (('sender', snd), ('receiver', rcv)):
    for k in ('net_rx_action', 'tcp_v4_rcv', 'sock_def_readable', 'tcp_data_queue', 'tcp_ack',
              'skb_defer_free', '__inet_lookup_established', 'tcp_write_xmit', '__alloc_skb',
              'tcp_recvmsg_locked'):
        c = sum(1 for s in grp if has(s, k))
        print(f'  {name} {k}: {100 * c / max(len(grp), 1):.1f}%')
