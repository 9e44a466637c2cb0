"""The floor of a request-reply round trip between two processes on loopback TCP.

One byte each way, TCP_NODELAY, 20,000 round trips after 1,000 of warm-up:
first with blocking reads (each side sleeps in the kernel until the other's byte
arrives, so every message wakes a sleeping process), then with both sides polling
non-blocking reads (nobody sleeps; two cores busy). The gap between the two is
what a wake-up costs on this machine. `python3 benches/loopback_pingpong.py`.
"""
import os
import socket
import time

N = 20_000


def recv_polling(s):
    while True:
        try:
            return s.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass


def pingpong(polling):
    recv = recv_polling if polling else (lambda s: s.recv(64))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = recv(c)
            if not d:
                break
            c.sendall(d)
        os._exit(0)
    s, _ = srv.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(1000):
        s.sendall(b"x")
        recv(s)
    t, c0 = time.perf_counter(), time.process_time()
    for _ in range(N):
        s.sendall(b"x")
        recv(s)
    dt, cpu = time.perf_counter() - t, time.process_time() - c0
    s.close()
    os.waitpid(pid, 0)
    how = "both polling" if polling else "blocking reads"
    print(f"loopback TCP ping-pong, {how}: {N / dt:,.0f} round trips/s, "
          f"{dt / N * 1e6:.1f} us each, {cpu / N * 1e6:.1f} us of CPU per round trip in this process")


if __name__ == "__main__":
    pingpong(False)
    pingpong(True)
