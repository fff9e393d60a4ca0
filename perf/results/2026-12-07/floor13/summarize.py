# Prints the floor cells and the compare.sh rows of each round of this directory (run.txt names them).
import json,glob,os,re
R=os.path.dirname(os.path.abspath(__file__))
notes=[l for l in open(R+'/run.txt') if re.match(r'\d\d:\d\d:\d\d round \d+:',l)]
comp=sorted(glob.glob(R+'/compare-*'))
def cdir_time(d): t=d.split('-')[-1]; return f"{t[:2]}:{t[2:4]}:{t[4:]}"
rounds={}
for l in notes:
    m=re.match(r'(\S+) round (\d+): (.*) load (\S+)',l); t,r,what,load=m.groups(); r=int(r)
    rounds.setdefault(r,{})
    if 'kernel_floor' in what: rounds[r]['floor_load']=load
    elif 'mosquitto' in what: rounds[r]['u']=(t,load)
    elif 'epoll' in what: rounds[r]['e']=(t,load)
    elif 'SHARDS' in what: rounds[r]['s']=(t,load)
def find(t):
    c=[d for d in comp if cdir_time(d)>=t]
    return c[0] if c else None
def lg(d,sc,b):
    f=f"{d}/{sc}-{b}.json"
    if not d or not os.path.exists(f): return None
    line=[l for l in open(f) if l.strip()]
    if not line: return None
    j=json.loads(line[-1])
    return j
def jl(j):
    # loadgen JSON: latency fields
    lat=j.get('latency_us') or j.get('latency') or {}
    return lat
def floor(r):
    f=f"{R}/floor-round{r}/floor.jsonl"
    out={}
    if os.path.exists(f):
        for l in open(f):
            d=json.loads(l); out[d['cell']]=d
    return out
def ms(x): return f"{x/1e3:.1f}"
print("FANOUT")
for r in sorted(rounds):
    fl=floor(r); row=[str(r)]
    for c in ('fanout_send','fanout_uring','fanout_send_2','fanout_uring_2'):
        d=fl.get(c)
        if d: a=d['run']['latency_from_due']; row.append(f"{ms(a['p50_us'])} / {ms(a['p99_us'])} / {ms(a['p999_us'])} (burst {ms(d['run']['burst']['p50_us'])}, {d['run']['sender_cpu_ns_per_copy']/1e3:.1f} µs; load {d['loadavg'].split()[0]})")
        else: row.append('-')
    print(' | '.join(row))
print("PAIRS")
for r in sorted(rounds):
    fl=floor(r); row=[str(r)]
    for c in ('pairs','pairs_uring'):
        d=fl.get(c)
        if d: a=d['run']['latency_from_due']; row.append(f"{a['p50_us']:.0f} / {a['p99_us']:,.0f} / {a['p999_us']:,.0f} ({d['run']['relay_cpu_ns_per_msg']/1e3:.1f} µs; load {d['loadavg'].split()[0]})")
        else: row.append('-')
    print(' | '.join(row))
print("COMPARE dirs per round")
for r in sorted(rounds):
    for k in ('u','e','s'):
        if k in rounds[r]:
            d=find(rounds[r][k][0]); t=os.path.join(d,'table.md') if d else None
            print(r,k,rounds[r][k][1],os.path.basename(d) if d else None)
            if t and os.path.exists(t):
                for l in open(t):
                    if l.startswith('| fan') or l.startswith('| pairs'): print('   ',l.strip())
