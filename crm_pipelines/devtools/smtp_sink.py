"""A mail server on 127.0.0.1 that keeps what it receives: enough SMTP (RFC 5321: EHLO/HELO,
MAIL, RCPT, DATA, RSET, NOOP, QUIT) for the alert e-mails, for the demo and the tests. A
development tool. ``fail_next`` answers the next N messages with a temporary 451.

    python -m crm_pipelines.devtools.smtp_sink --port 8025
"""

from __future__ import annotations

import argparse
import email
import email.policy
import socketserver
import threading
from email.message import EmailMessage


class SmtpSink:
    def __init__(self, port: int = 0, fail_next: int = 0):
        self.messages: list[EmailMessage] = []
        self.fail_next = fail_next
        self._lock = threading.Condition()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self._say("220 localhost crm_pipelines smtp sink")
                rcpts = []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode("utf-8", "replace").strip()
                    verb = cmd[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        self._say("250 localhost" if verb == "HELO" else "250-localhost\r\n250 8BITMIME")
                    elif verb == "MAIL":
                        rcpts = []
                        self._say("250 OK")
                    elif verb == "RCPT":
                        rcpts.append(cmd.split(":", 1)[1].strip())
                        self._say("250 OK")
                    elif verb == "DATA":
                        self._say("354 End data with <CR><LF>.<CR><LF>")
                        data = []
                        while True:
                            part = self.rfile.readline()
                            if part in (b".\r\n", b".\n", b""):
                                break
                            data.append(part[1:] if part.startswith(b"..") else part)
                        with sink._lock:
                            if sink.fail_next > 0:
                                sink.fail_next -= 1
                                self._say("451 Try again later")
                                continue
                            sink.messages.append(email.message_from_bytes(b"".join(data), policy=email.policy.default))
                            sink._lock.notify_all()
                        self._say("250 OK: queued")
                    elif verb in ("RSET", "NOOP"):
                        self._say("250 OK")
                    elif verb == "QUIT":
                        self._say("221 Bye")
                        return
                    else:
                        self._say("502 Command not implemented")

            def _say(self, text: str) -> None:
                self.wfile.write((text + "\r\n").encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> "SmtpSink":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
            return list(self.messages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8025)
    args = p.parse_args()
    sink = SmtpSink(args.port)
    print(f"SMTP sink on 127.0.0.1:{sink.port}; Ctrl-C stops", flush=True)
    try:
        sink.server.serve_forever()
    except KeyboardInterrupt:
        sink.server.server_close()


if __name__ == "__main__":
    main()
