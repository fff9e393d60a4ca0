import sys, collections
# each sample: header line then frames (innermost first), blank line between
samples=[]; cur=None
for l in open(sys.argv[1]):
    l=l.rstrip('\n')
    if not l.strip():
        if cur is not None: samples.append(cur); cur=None
        continue
    if not l.startswith('\t') and not l.startswith(' '*8):
        cur=[]
        continue
    parts=l.split()
    if len(parts)>=2: cur.append(parts[1])
if cur: samples.append(cur)
def cls(fr):
    s=set(fr)
    soft = 'net_rx_action' in s
    if 'io_send' in s or 'io_sendmsg' in s:
        return 'CONNACK send: loopback delivery to loadgen (softirq)' if soft else 'CONNACK send: own TCP transmit'
    if 'io_accept' in s: return 'accept (incl. socket/file alloc)'
    if 'io_recv' in s or 'io_recvmsg' in s: return 'receive CONNECT'
    if 'io_msg_ring' in s or 'io_msg_install_complete' in s: return 'hand-off MSG_RING'
    if 'io_async_cancel' in s or 'io_close' in s or 'io_fixed_fd_remove' in s: return 'cancel/close (hand-off source)'
    if soft: return 'other softirq'
    if any(f.startswith('__schedule') or f=='schedule' for f in fr): return 'schedule/context switch'
    if fr and not fr[0].startswith(('_','io_','tcp','sk','sock','ip','mem','kmem','do_','entry','syscall','x64','__')) and any('ringmq' in f or '::' in f for f in fr[:3]): return 'broker user space'
    if 'io_cqring_wait' in s or '__do_sys_io_uring_enter' in s: return 'io_uring other (submit/wait/task work)'
    return 'other: ' + (fr[0] if fr else '?')
c=collections.Counter(cls(s) for s in samples)
n=len(samples)
for k,v in c.most_common(25): print(f"{100*v/n:5.1f}%  {k}")
print(n,'samples')
