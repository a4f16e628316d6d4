import warnings; warnings.filterwarnings("ignore")
import pyarrow.plasma as plasma, time, sys
c=plasma.connect("/tmp/bproto/s.sock")
oid=plasma.ObjectID(bytes(20))
c.create_and_seal(oid,b"x"*64,b"")
time.sleep(0.5)
for i in range(3):
    c.contains(oid)
    b=c.get_buffers([oid],timeout_ms=0); del b
time.sleep(0.5)
