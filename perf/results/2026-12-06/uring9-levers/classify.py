import re,subprocess,sys
def classify(sym,dso):
    if '[k]' not in dso and 'kernel' not in dso: return 'user'
    s=sym
    if re.match(r'(__)?io_|io_uring|tctx_|__io',s): return 'k:io_uring'
    if re.match(r'(ep_|do_epoll|__x64_sys_epoll|ep_poll)',s): return 'k:epoll'
    if re.match(r'(do_syscall|entry_SYSCALL|syscall_|__x64_sys|x64_sys_call|fdget|fput|__fget|sockfd_lookup|__sys_|sock_from_file|exit_to_user|syscall_exit|__audit|import_iovec|__import_iovec|copy_msghdr|___sys_|rw_verify|__check_object|check_heap|__virt_addr|__fdget|security_socket|apparmor|aa_|rseq)',s): return 'k:syscall/fd'
    if re.match(r'(schedule|__schedule|finish_task_switch|pick_|enqueue|dequeue|update_|try_to_wake|native_write_msr|__switch_to|psi_|ttwu|select_task|wake_up|__wake_up|autoremove|default_wake|hrtimer|_raw_spin|native_|irq|asm_|sysvec|__sysvec|handle_softirqs|__do_softirq|do_softirq|__local_bh|tick_|ktime|read_tsc|kvm|clockevents|lapic)',s): return 'k:sched/irq/locks'
    return 'k:net+mm+other'
for f in sys.argv[1:]:
    out=subprocess.run(['perf','report','-i',f,'--no-children','--sort','sym','-q','-g','none','--percent-limit','0'],capture_output=True,text=True).stdout
    tot={}
    for line in out.splitlines():
        m=re.match(r'\s*([\d.]+)%\s+(\[[k.]\])\s+(.*)',line)
        if not m: continue
        p=float(m.group(1)); c=classify(m.group(3).strip(), m.group(2))
        tot[c]=tot.get(c,0)+p
    print(f, ' '.join(f'{k}={v:.1f}%' for k,v in sorted(tot.items())))
