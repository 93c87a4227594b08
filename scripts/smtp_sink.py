#!/usr/bin/env python3
"""A real SMTP server on loopback for cairn's tests, built on aiosmtpd.

Every accepted message is stored as a file in --dir. The server can refuse every
recipient (or, with --refuse-to TEXT, those whose address contains TEXT) with a fixed
reply (--refuse "550 5.7.1 Sender domain is not verified"), refuse
the first N messages with a transient reply (--transient-first N), or a random share
of them (--transient-rate 0.05, --seed S; each such refusal adds a line to
".transient" in --dir), take its time
before accepting each message (--delay SECONDS), and hold messages to recipients
containing TEXT (--hold-to TEXT): the Nth held message leaves a ".held-*" marker in --dir
and waits until the file "release" there holds a number of at least N. While the file
"outage" exists in --dir, every recipient is refused with a transient 451 (a mail
provider's maintenance window), each refusal adding a line to ".outage" there.

Prints "listening on 127.0.0.1:PORT" once it accepts connections; runs until killed.
"""
import argparse
import asyncio
import os
import random
import time

from aiosmtpd.smtp import SMTP


def released(directory):
    try:
        with open(os.path.join(directory, "release")) as file:
            return int(file.read().strip() or 0)
    except (OSError, ValueError):
        return 0


class Sink:
    def __init__(self, directory, refuse, refuse_to, transient_first, delay, hold_to,
                 transient_rate=0.0, seed=None):
        self.directory = directory
        self.hold_to = hold_to
        self.held = 0
        self.refuse = refuse
        self.refuse_to = refuse_to
        self.transient_left = transient_first
        self.transient_rate = transient_rate
        self.random = random.Random(seed)
        self.delay = delay
        os.makedirs(directory, exist_ok=True)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if os.path.exists(os.path.join(self.directory, "outage")):
            with open(os.path.join(self.directory, ".outage"), "a") as file:
                file.write(f"{time.time_ns()}\n")
            return "451 4.3.2 System not accepting network messages"
        if self.refuse and (self.refuse_to is None or self.refuse_to in address):
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.transient_left > 0:
            self.transient_left -= 1
            return "451 4.3.0 Try again later"
        if self.transient_rate and self.random.random() < self.transient_rate:
            with open(os.path.join(self.directory, ".transient"), "a") as file:
                file.write(f"{time.time_ns()}\n")
            return "451 4.3.0 Try again later"
        if self.delay:
            await asyncio.sleep(self.delay)
        name = f"{time.time_ns()}-{os.getpid()}"
        if self.hold_to and any(self.hold_to in r for r in envelope.rcpt_tos):
            self.held += 1
            mine = self.held
            open(os.path.join(self.directory, f".held-{name}"), "w").close()
            while released(self.directory) < mine:
                await asyncio.sleep(0.02)
        temporary = os.path.join(self.directory, f".{name}.tmp")
        with open(temporary, "wb") as file:
            file.write(envelope.original_content or envelope.content)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, os.path.join(self.directory, f"{name}.eml"))
        return "250 2.0.0 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--refuse", default=None)
    parser.add_argument("--refuse-to", default=None, help="refuse only recipients containing this text")
    parser.add_argument("--transient-first", type=int, default=0)
    parser.add_argument("--transient-rate", type=float, default=0.0,
                        help="refuse this share of messages with a transient 451")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hold-to", default=None, help="hold messages to recipients containing this text")
    args = parser.parse_args()

    sink = Sink(args.dir, args.refuse, args.refuse_to, args.transient_first, args.delay, args.hold_to,
                args.transient_rate, args.seed)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(sink, hostname="cairn-test-sink"), "127.0.0.1", args.port)
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
