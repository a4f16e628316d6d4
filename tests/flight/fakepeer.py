"""A misbehaving peer for the fault tests: a real pyarrow.flight server that answers like a
gateway holding one object, then misbehaves as told.

    python fakepeer.py PORT MODE HEX_ID SIZE

MODE: ``stall`` sends the schema and the first 4 MiB row of the raw form, prints "stalled"
and then waits (it is killed by the test); ``slow`` takes 10 minutes to answer a lookup;
``short`` declares SIZE bytes but ends the stream after the first row.
"""

import sys
import time

import pyarrow as pa
import pyarrow.flight as fl

CHUNK = 4 << 20


class Peer(fl.FlightServerBase):
    def __init__(self, port, mode, hex_id, size):
        super().__init__(f"grpc://127.0.0.1:{port}")
        self.mode, self.hex_id, self.size = mode, hex_id, size
        md = {b"plasma.object_id": hex_id.encode(), b"plasma.data_size": str(size).encode(),
              b"plasma.metadata": b"", b"plasma.digest": b"0011223344556677"}
        self.schema = pa.schema([pa.field("data", pa.binary(), nullable=False)], metadata=md)

    def get_flight_info(self, context, descriptor):
        if self.mode == "slow":
            time.sleep(600)
        if descriptor.path[0].decode() != self.hex_id:
            raise KeyError("not found")
        ticket = fl.Ticket(bytes.fromhex(self.hex_id))
        return fl.FlightInfo(self.schema, descriptor, [fl.FlightEndpoint(ticket, [])], -1, self.size)

    def do_get(self, context, ticket):
        first = pa.record_batch([pa.array([b"\x01" * min(CHUNK, self.size)], pa.binary())],
                                schema=self.schema)

        def batches():
            yield first
            if self.mode == "stall":
                print("stalled", flush=True)
                time.sleep(600)

        return fl.GeneratorStream(self.schema, batches())


if __name__ == "__main__":
    port, mode, hex_id, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    server = Peer(port, mode, hex_id, size)
    print("ready", flush=True)
    server.serve()
