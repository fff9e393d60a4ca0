import re,sys
def parse(f):
    maps={}; cur=None
    for line in open(f):
        if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):
            parts=line.split()
            cur=parts[0]+' '+parts[1]+' '+(parts[5] if len(parts)>5 else '')
            maps[cur]={}
        else:
            k,v=line.split(':',1)
            v=v.strip().split()
            if v and v[0].isdigit(): maps[cur][k]=int(v[0])
    return maps
a=parse(sys.argv[1]); b=parse(sys.argv[2])
for k in sorted(set(a)|set(b)):
    ra=a.get(k,{}).get('Rss',0); rb=b.get(k,{}).get('Rss',0)
    if ra!=rb: print(f"{k:70s} {ra:6d} -> {rb:6d} ({rb-ra:+d})")
