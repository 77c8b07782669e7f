"""How gRPC's Python server ends a client stream that the client cancelled mid-upload.

    .venv/bin/python scripts/probe_cancel_race.py [--calls 300]

A bare server (no mesh code) reads a request stream; the client sends two messages, stalls and
cancels. Prints how often the server's request iterator raised (the cancel was seen) and how
often it simply *ended*, as a finished upload does, while `context.is_active()` still said the
call was alive. The second row is why uploads declare their size (`upload_size_bytes`,
`pcm_size_bytes`) and services/common/streams.UploadMeter checks it.
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
from concurrent import futures

import grpc

from asr.common.v1 import audio_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc


class Reader(pb_grpc.TranscriptionServiceServicer):
    def __init__(self):
        self.outcomes: collections.Counter = collections.Counter()
        self.done = threading.Semaphore(0)

    def Transcribe(self, request_iterator, context):
        try:
            for _ in request_iterator:
                pass
            alive = "still active" if context.is_active() else "already inactive"
            self.outcomes[f"iterator ended like a finished upload, call {alive}"] += 1
        except grpc.RpcError:
            self.outcomes["iterator raised (cancel seen)"] += 1
        finally:
            self.done.release()
        return iter(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    reader = Reader()
    server = grpc.server(futures.ThreadPoolExecutor(16))
    pb_grpc.add_TranscriptionServiceServicer_to_server(reader, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TranscriptionServiceStub(channel)
        for _ in range(args.calls):
            release = threading.Event()

            def requests(release=release):
                yield pb.TranscribeRequest(config=pb.TranscriptionConfig())
                yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0" * 100))
                release.wait(5)  # the upload stalls; the client gives up

            call = stub.Transcribe(requests())
            time.sleep(0.02)
            call.cancel()
            release.set()
            reader.done.acquire(timeout=5)
    server.stop(0)
    print(f"{'outcome':60s}  calls")
    for outcome, count in reader.outcomes.most_common():
        print(f"{outcome:60s}  {count} of {args.calls}")


if __name__ == "__main__":
    main()
