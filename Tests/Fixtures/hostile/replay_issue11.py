#!/usr/bin/env python3
"""Replays issue 11's reproductions (crashes, hangs, clobbering, memory, silent differences) against a
bottleneck binary on real files, one line per case: `ok` when the tool ends with a clean one-line error (or
succeeds where it should) and the planted victims are untouched, `FAIL` otherwise. Needs h5py and numpy.

    python3 Tests/Fixtures/hostile/replay_issue11.py .build/release/bottleneck /tmp/replay .
"""
import os, sys, json, subprocess, shutil, time, struct
import h5py, numpy as np

BIN = os.path.abspath(sys.argv[1]); W = os.path.abspath(sys.argv[2]); REPO = os.path.abspath(sys.argv[3])
if os.path.exists(W) and os.listdir(W):
    sys.exit(f"{W} is not empty: give a new folder for the replay's files")
os.makedirs(W, exist_ok=True)
os.chdir(W)
results = []

def run(name, args, timeout=60, expect_ok=False, check=None):
    t = time.time()
    try:
        p = subprocess.run([BIN] + args, capture_output=True, timeout=timeout, text=True, errors="replace")
        rc = p.returncode; err = p.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        rc = "HANG"; err = []
    msg = err[-1] if err else ""
    bad = rc == "HANG" or (isinstance(rc, int) and rc < 0) or (expect_ok and rc != 0) or (not expect_ok and rc == 0)
    extra = check() if check else ""
    if extra: bad = True
    results.append((name, rc, bad))
    print(f"{'FAIL' if bad else 'ok  '} {name:45s} rc={rc} {time.time()-t:5.1f}s | {msg[:150]} {extra}", flush=True)

# Base material: a tiny image folder, a random-weights cache and a head model.
imgs = os.path.join(W, "imgs"); shutil.copytree(os.path.join(REPO, "data/shapes/train"), imgs)
for c in os.listdir(imgs):
    for f in sorted(os.listdir(os.path.join(imgs, c)))[3:]: os.remove(os.path.join(imgs, c, f))
run("base extract", ["extract", "--images", imgs, "--out", "base.h5", "--weights", "random", "--layer", "pool5"], expect_ok=True, timeout=300)
run("base train-head", ["train-head", "--cache", "base.h5", "--out", "headrun", "--epochs", "1"], expect_ok=True)
model = "headrun/model.h5"
c0dir = os.path.join(imgs, sorted(os.listdir(imgs))[0]); pimg = os.path.join(c0dir, sorted(os.listdir(c0dir))[0])

# Crashes: HDF5 self-loop
shutil.copy(model, "loop.h5")
with h5py.File("loop.h5", "a") as f: g = f.create_group("g"); g["loop"] = g
run("inspect self-loop h5", ["inspect", "loop.h5"])
run("extract --weights self-loop", ["extract", "--images", imgs, "--out", "x1.h5", "--weights", "loop.h5"])
run("predict --model self-loop", ["predict", "--model", "loop.h5", pimg])
# External link in weights
shutil.copy(model, "ext.h5")
with h5py.File("ext.h5", "a") as f: f["extra"] = h5py.ExternalLink("base.h5", "/features")
run("inspect external link", ["inspect", "ext.h5"])
run("predict external link", ["predict", "--model", "ext.h5", pimg])
# Duplicate classes
shutil.copy("base.h5", "dupc.h5")
with h5py.File("dupc.h5", "a") as f:
    c = f["classes"][...]; c[1] = c[0]; f["classes"][...] = c
for cmd in (["inspect", "dupc.h5"], ["train-head", "--cache", "dupc.h5", "--out", "r_dupc"], ["evaluate", "--model", model, "--cache", "dupc.h5"]):
    run("dup /classes " + cmd[0], cmd)
def model_attr(name, key, mutate):
    shutil.copy(model, name)
    with h5py.File(name, "a") as f:
        v = f.attrs[key]; v = v.decode() if isinstance(v, bytes) else str(v)
        f.attrs[key] = np.bytes_(mutate(v).encode())
    run("predict " + name, ["predict", "--model", name, pimg])
model_attr("m_dupcls.h5", "classes", lambda v: json.dumps([json.loads(v)[0]] * len(json.loads(v))))
model_attr("m_drop2.h5", "dropout", lambda v: "2.0")
model_attr("m_dropnan.h5", "dropout", lambda v: "nan")
def cfg(change):
    def m(v): c = json.loads(v); change(c); return json.dumps(c)
    return m
model_attr("m_hidden.h5", "config", cfg(lambda c: c.__setitem__("hidden", -1)))
model_attr("m_pooled.h5", "config", cfg(lambda c: c.__setitem__("pooledSize", 100000)))
def conv(width):
    def ch(c):
        for it in c["features"]:
            if "conv" in it: it["conv"]["_0"] = width; break
    return ch
model_attr("m_convneg.h5", "config", cfg(conv(-5)))
model_attr("m_conv2e40.h5", "config", cfg(conv(2**40)))
# Shard attributes
for name, shard in (("shard_huge", "1/9223372036854775807"), ("shard_big", "1/300000000")):
    shutil.copy("base.h5", name + ".h5")
    with h5py.File(name + ".h5", "a") as f:
        for k, v in f.attrs.items():
            if "shard" in k: f.attrs[k] = np.bytes_(shard.encode())
        if not any("shard" in k for k in f.attrs): f.attrs["shard"] = np.bytes_(shard.encode())
    run("merge " + name, ["merge", name + ".h5", "--out", name + "_m.h5"], timeout=60)
# Byte flips in a cache
data = open("base.h5", "rb").read(); rng = np.random.default_rng(1); bad_flips = 0
for i in range(60):
    b = bytearray(data); pos = int(rng.integers(0, len(b))); b[pos] ^= 1 << int(rng.integers(0, 8))
    open("flip.h5", "wb").write(b)
    for cmd in (["inspect", "flip.h5"], ["train-head", "--cache", "flip.h5", "--out", "r_flip", "--epochs", "1"]):
        try:
            p = subprocess.run([BIN] + cmd, capture_output=True, timeout=60)
            if p.returncode < 0: bad_flips += 1; print("  signal", p.returncode, "at", pos, cmd[0])
        except subprocess.TimeoutExpired: bad_flips += 1; print("  hang at", pos)
    shutil.rmtree("r_flip", ignore_errors=True)
print(f"{'FAIL' if bad_flips else 'ok  '} 60 bit flips x (inspect, train-head): {bad_flips} signals/hangs", flush=True)
results.append(("flips", 0, bad_flips > 0))

# Hangs: FIFOs
fifo_imgs = os.path.join(W, "fimgs"); shutil.copytree(imgs, fifo_imgs); os.mkfifo(os.path.join(fifo_imgs, os.listdir(fifo_imgs)[0], "x.jpg"))
run("extract with FIFO x.jpg", ["extract", "--images", fifo_imgs, "--out", "fifo.h5", "--weights", "random", "--layer", "pool5"], expect_ok=True, timeout=120)
os.mkfifo("fifo_w.pth")
run("--weights FIFO", ["extract", "--images", imgs, "--out", "x2.h5", "--weights", "fifo_w.pth"], timeout=20)
run("--model FIFO", ["predict", "--model", "fifo_w.pth", pimg], timeout=20)
run("inspect FIFO", ["inspect", "fifo_w.pth"], timeout=20)
run("--weights /dev/zero", ["inspect", "/dev/zero"], timeout=20)
run("--weights directory", ["inspect", imgs], timeout=20)
# Symlink loops
loop_imgs = os.path.join(W, "limgs"); shutil.copytree(imgs, loop_imgs)
c0 = os.path.join(loop_imgs, sorted(os.listdir(loop_imgs))[0]); os.symlink(".", os.path.join(c0, "loop")); os.symlink("..", os.path.join(c0, "up"))
def rows_equal():
    with h5py.File("loop.cache.h5") as f: n = f["features"].shape[0]
    return "" if n == 15 else f"rows={n}"  # 9 images + the 6 of the two other classes reached through up -> ..; loop -> . skipped
run("extract with 2 symlink loops", ["extract", "--images", loop_imgs, "--out", "loop.cache.h5", "--weights", "random", "--layer", "pool5"], expect_ok=True, timeout=120, check=rows_equal)
# YAML alias bomb
lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x]'] + [f'a{i}: &a{i} {{*a{i-1}: 1, [*a{i-1}, *a{i-1}, *a{i-1}]: 2}}' for i in range(1, 10)] + ['stages: *a9']
open("bomb.yaml", "w").write("\n".join(lines) + "\n")
run("run --check alias bomb", ["run", "--check", "bomb.yaml"], timeout=30)

# Clobbering: planted links at temporaries
open("victim.txt", "w").write("precious\n")
os.symlink("victim.txt", "c.h5.partial.new"); os.symlink("victim.txt", "c.h5.tmp")
run("extract with planted temp links", ["extract", "--images", imgs, "--out", "c.h5", "--weights", "random", "--layer", "pool5"], timeout=120,
    expect_ok=True, check=lambda: ("" if open("victim.txt").read() == "precious\n" and not os.path.islink("c.h5") else "victim clobbered or c.h5 is a link"))
os.symlink("victim.txt", "link.html")
run("report --out symlink", ["report", "headrun", "--out", "link.html"], check=lambda: "" if open("victim.txt").read() == "precious\n" else "victim clobbered")
if os.getuid() == 0:
    run("report --out /dev/full", ["report", "headrun", "--out", "/dev/full"], check=lambda: "" if os.path.exists("/dev/full") and not os.path.isfile("/dev/full") else "device replaced")
os.makedirs("victimrun"); open("victimrun/config.json", "w").write("mine\n")
open("evil.yaml", "w").write(f"name: evil\nimages: {imgs}\nlayer: pool5\nweights: random\nout: pout\nstages:\n  - stage: extract\n  - stage: train-head\n    name: ../victimrun\n    epochs: 1\n")
run("pipeline stage name ../victimrun", ["run", "evil.yaml"], check=lambda: "" if open("victimrun/config.json").read() == "mine\n" else "victim config replaced")
# Two concurrent --overwrite extracts
ps = [subprocess.Popen([BIN, "extract", "--images", imgs, "--out", "two.h5", "--weights", "random", "--layer", l, "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for l in ("pool5", "pool4")]
outs = [p.communicate() for p in ps]; rcs = [p.returncode for p in ps]
ok2 = sorted(rcs)[0] == 0 and sorted(rcs)[1] != 0
print(f"{'ok  ' if ok2 else 'FAIL'} two concurrent --overwrite extracts rc={rcs} | {[o[1].strip().splitlines()[-1][:120] if o[1].strip() else '' for o in outs]}")
results.append(("two", rcs, not ok2))
# Orphan temporaries of a dead process
dead = subprocess.Popen(["true"]); dead.wait()
orphan = f"headrun2/model.h5.partial-{dead.pid}"
os.makedirs("headrun2", exist_ok=True); open(orphan, "wb").write(b"x" * 1000)
run("orphan temp cleaned by next train-head", ["train-head", "--cache", "base.h5", "--out", "headrun2", "--epochs", "1", "--overwrite"], expect_ok=True,
    check=lambda: "" if not os.path.exists(orphan) else "orphan survived")
# Memory
for bs in ("8000", "100000"):
    p = subprocess.run(["/usr/bin/time", "-f", "%M", BIN, "extract", "--images", imgs, "--out", f"bs{bs}.h5", "--weights", "random", "--layer", "pool5", "--batch-size", bs], capture_output=True, text=True, timeout=300)
    rss = int(p.stderr.strip().splitlines()[-1]) // 1024
    bad = p.returncode < 0 or rss > 2500
    print(f"{'FAIL' if bad else 'ok  '} extract --batch-size {bs} on {3*len(os.listdir(imgs))} images rc={p.returncode} peak RSS {rss} MiB | {p.stderr.strip().splitlines()[-2][:120] if len(p.stderr.strip().splitlines())>1 else ''}")
    results.append(("bs", p.returncode, bad))
# Silent differences: non-UTF-8 names and dot class folders
u = os.path.join(W, "uimgs"); shutil.copytree(imgs, u); c0 = sorted(os.listdir(u))[0]
src = os.path.join(u, c0, sorted(os.listdir(os.path.join(u, c0)))[0])
shutil.copy(src, os.path.join(u.encode(), c0.encode(), b"bad\xff.png")); os.makedirs(os.path.join(u.encode(), b"cls\xfe")); shutil.copy(src, os.path.join(u.encode(), b"cls\xfe", b"a.png"))
os.makedirs(os.path.join(u, "..x")); shutil.copy(src, os.path.join(u, "..x", "b.png"))
p = subprocess.run([BIN, "extract", "--images", u, "--out", "u.h5", "--weights", "random", "--layer", "pool5"], capture_output=True, text=True, errors="replace", timeout=120)
print(f"{'info'} non-UTF-8 + dot folder extract rc={p.returncode} | " + " / ".join(l[:100] for l in p.stderr.strip().splitlines() if "UTF" in l or "name" in l.lower())[:300])
if os.path.exists("u.h5"):
    with h5py.File("u.h5") as f: print("      classes:", [c.decode() if isinstance(c, bytes) else c for c in f["classes"][...]])
# Safetensors with overlapping ranges
hdr = {"features.0.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "features.0.bias": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
h = json.dumps(hdr).encode(); open("overlap.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 12)
run("inspect overlapping safetensors", ["inspect", "overlap.safetensors"])
print("SUMMARY:", sum(1 for r in results if r[2]), "failing of", len(results))
