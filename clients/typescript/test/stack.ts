/**
 * A real service for the tests: spawns `python -m tests.support.ts_stack` at the repository root
 * (ENTITLEMENTS_PYTHON, default .venv/bin/python) and reads the JSON line it prints.
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { fileURLToPath } from "node:url";

export interface StackInfo {
  grpc: string;
  grpcTarget: string;
  /** Unset with `--tls` (the service serves no HTTP beside a TLS port). */
  http: string;
  token: string;
  paid: string;
  free: string;
  /** With `--tls`: PEM files (the CA, a client cert from it, one from another CA). */
  tls?: { ca: string; cert: string; key: string; rogueCert: string; rogueKey: string };
}

// build-test/test/stack.js → the repository root, four levels up.
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export class Stack {
  private constructor(
    readonly info: StackInfo,
    private readonly proc: ChildProcessWithoutNullStreams,
    private readonly lines: Interface,
  ) {}

  /** `args`: `["--tls"]` for a mutual-TLS gRPC port. */
  static async start(args: string[] = []): Promise<Stack> {
    const python = process.env.ENTITLEMENTS_PYTHON ?? join(REPO, ".venv", "bin", "python");
    const proc = spawn(python, ["-m", "tests.support.ts_stack", ...args], { cwd: REPO });
    // The helper's last stderr kept (8 KiB), so a start that fails says why.
    let stderr = "";
    proc.stderr.on("data", (chunk: Buffer) => {
      if (process.env.TS_STACK_VERBOSE) process.stderr.write(chunk);
      stderr = (stderr + chunk.toString()).slice(-8192);
    });
    const lines = createInterface({ input: proc.stdout });
    const first = await new Promise<string>((ok, fail) => {
      const timer = setTimeout(
        () => fail(new Error(`the service did not start in 90 s; its stderr:\n${stderr}`)),
        90_000,
      );
      lines.once("line", (line) => {
        clearTimeout(timer);
        ok(line);
      });
      proc.once("exit", (code) =>
        fail(new Error(`ts_stack exited with ${code}; its stderr:\n${stderr}`)),
      );
    });
    return new Stack(JSON.parse(first) as StackInfo, proc, lines);
  }

  /** Put `subject` on the pro plan (a grant through the write side). */
  async grant(subject: string): Promise<void> {
    await this.send(`grant ${subject}`);
  }

  /** SIGSTOP the service (its streams stop, its sockets stay open); `resume()` undoes it. */
  async pause(): Promise<void> {
    await this.send("pause");
  }

  async resume(): Promise<void> {
    await this.send("resume");
  }

  /** Stop the service, drop and recreate its database, start it on the same ports. */
  async wipe(): Promise<void> {
    await this.send("wipe");
  }

  private async send(command: string): Promise<void> {
    const answer = new Promise<string>((ok) => this.lines.once("line", ok));
    this.proc.stdin.write(`${command}\n`);
    const line = await answer;
    if (line !== "ok") throw new Error(`${command}: ${line}`);
  }

  async stop(): Promise<void> {
    const exited = new Promise((ok) => this.proc.once("exit", ok));
    this.proc.stdin.end();
    await exited;
  }
}
