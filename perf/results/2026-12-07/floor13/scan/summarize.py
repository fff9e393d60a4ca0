# Prints the fan-out size scan of this directory (scan.sh): the floor's and ringmq's
# p50 / p99 / p99.9 and the floor's burst per subscriber count, one line per run.
import json, os
D = os.path.dirname(os.path.abspath(__file__))
for n in (100, 250, 500, 1000):
    for f in (json.loads(l) for l in open(f'{D}/floor-n{n}.jsonl')):
        a = f['latency_from_due']
        print(f"{n} floor p50/p99/p999 {a['p50_us']/1e3:.2f}/{a['p99_us']/1e3:.2f}/{a['p999_us']/1e3:.2f} ms"
              f" burst p50/p99 {f['burst']['p50_us']/1e3:.2f}/{f['burst']['p99_us']/1e3:.2f} ms"
              f" sender {f['sender_cpu_ns_per_copy']/1e3:.1f} us/copy")
    for r in (json.loads(l) for l in open(f'{D}/ringmq-n{n}.jsonl') if l.strip()):
        a = r['latency_us']
        print(f"{n} ringmq p50/p99/p999 {a['p50']/1e3:.2f}/{a['p99']/1e3:.2f}/{a['p999']/1e3:.2f} ms"
              f" {r['received_per_s']:.0f} deliveries/s, {r['lost']} lost")
