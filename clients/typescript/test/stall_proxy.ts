/**
 * A loopback TCP proxy whose path can stop carrying bytes while every socket stays open (no
 * FIN, no RST): a broken middlebox or a dead network path, as tests/support/stall_proxy.py.
 */

import { type Server, type Socket, connect, createServer } from "node:net";

export class StallingProxy {
  private stalled = false;
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(upstreamPort: number): Promise<StallingProxy> {
    let proxy: StallingProxy | undefined;
    const server = createServer((client) => {
      const upstream = connect(upstreamPort, "127.0.0.1");
      for (const socket of [client, upstream]) {
        proxy?.sockets.add(socket);
        socket.on("error", () => undefined);
        socket.on("close", () => proxy?.sockets.delete(socket));
      }
      const pipe = (from: Socket, to: Socket): void => {
        from.on("data", (chunk: Buffer) => {
          if (!proxy?.stalled) to.write(chunk); // stalled: read and dropped
        });
      };
      pipe(client, upstream);
      pipe(upstream, client);
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const address = server.address();
    if (!address || typeof address !== "object") throw new Error("no port");
    proxy = new StallingProxy(server, address.port);
    return proxy;
  }

  /** From now on bytes are read and dropped in both directions; nothing is closed. */
  stall(): void {
    this.stalled = true;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((ok) => this.server.close(ok));
  }
}
