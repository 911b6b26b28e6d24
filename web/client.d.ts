// Types for /client.js (README "Without a WebSocket: SSE, long-poll, `pgfeed tail`, `/client.js`"
// and "Live views from the browser"), served beside it as /client.d.ts.

export type Status = "connecting" | "connected" | "offline" | "fallback";
export type Transport = "ws" | "sse" | "poll";

/** An event (PROTOCOL §4). */
export interface FeedEvent<Row = Record<string, unknown>> {
  type: string;
  topic: string;
  cursor: string;
  table: string;
  op: "insert" | "update" | "delete";
  id: unknown;
  data: Row;
  committed_at: string;
}

export interface ConnectOptions {
  /** The server's origin; default: the page's. */
  url?: string;
  /** A JWT, or a function returning one (or a promise of one), called before every connection. */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Topics to follow; may be empty when only views are used. */
  topics?: string[];
  onEvent?: (event: FeedEvent) => void;
  /** With it, a topic without a cursor starts with a snapshot (WebSocket only). */
  onSnapshot?: ((topic: string, data: unknown, cursor: string) => void) | null;
  /** `detail` is the fallback transport ("sse" | "poll") when `status` is "fallback". */
  onStatus?: (status: Status, detail?: string) => void;
  onRefreshNeeded?: (topic: string, reason: string) => void;
  /** ms; default 250. */
  backoffMin?: number;
  /** ms; default 10000. */
  backoffMax?: number;
  /** ms between pings on the WebSocket; default 20000. */
  pingEvery?: number;
  /** WebSocket attempts that fail to open before a fallback; default 2. */
  wsFailuresBeforeFallback?: number;
  /** ms between WebSocket tries while on a fallback; default 30000. */
  wsRetryEvery?: number;
  /** s: the long-poll wait; default 25. */
  pollWait?: number;
  /** Which transports to use, in order of preference; default all three. */
  transports?: Transport[];
}

/**
 * A view's definition (PROTOCOL §9): a table topic, a filter (column → `op.value`, PostgREST
 * style, all must hold), an order (`column[.asc|.desc][.nullsfirst|.nullslast]`, comma-separated),
 * at most `limit` rows (1–1000, default 100) after the keyset position `after` (a `next` token).
 */
export interface ViewDefinition {
  topic: string;
  filter?: Record<string, string>;
  order?: string;
  limit?: number;
  after?: string | null;
  /** Frames carry `count`, the number of rows matching the filter across all pages. */
  count?: boolean;
  /** The view's name on the connection; default `v1`, `v2`, … */
  name?: string;
}

/** One operation of a `view_delta`, applied in order: `from` is the index before, `to` after. */
export type ViewOp<Row = Record<string, unknown>> =
  | { op: "exit"; key: string; from: number; why: "delete" | "unmatch" | "overflow" }
  | { op: "enter"; key: string; to: number; row: Row; why: "insert" | "match" | "fill" }
  | { op: "update"; key: string; from: number; to: number; row: Row };

/**
 * What changed, passed to onChange after the view's rows were updated: a whole window (`view`:
 * the first, after a new definition, or a resume the server answered with a fresh window), or the
 * ops of one commit (`delta`), already applied to `rows`.
 */
export interface ViewChange<Row = Record<string, unknown>> {
  type: "view" | "delta";
  /** The ops applied, in order; null for a whole window. */
  ops: ViewOp<Row>[] | null;
  count: number | null;
  next: string | null;
  cursor: string | null;
}

export interface ViewError {
  /** `bad_request`, `forbidden`, `unknown_topic`, … (PROTOCOL §5), or `http_<status>`. */
  code: string;
  message: string;
}

export interface View<Row = Record<string, unknown>> {
  readonly name: string;
  readonly definition: Readonly<ViewDefinition>;
  /** The window's rows, in order; exact as of `cursor`. */
  readonly rows: Row[];
  /** Rows matching the filter across all pages, when the definition asks for `count`. */
  readonly count: number | null;
  /** The `after` token of the next page; null when there is none. */
  readonly next: string | null;
  /** The cursor of the last frame applied. */
  readonly cursor: string | null;
  /** Whether a first window has arrived. */
  readonly loaded: boolean;
  /** The server's refusal of the definition, if it refused it. */
  readonly error: ViewError | null;
  /** Replaces the definition (another page, sort or filter); `rows` stay until its first window. */
  update(definition: ViewDefinition): void;
  close(): void;
}

export interface Feed {
  close(): void;
  readonly status: Status | null;
  /** Each topic's last cursor. */
  readonly cursors: Record<string, string | null>;
  view<Row = Record<string, unknown>>(
    definition: ViewDefinition,
    onChange?:
      | ((rows: Row[], change: ViewChange<Row>) => void)
      | { onChange?: (rows: Row[], change: ViewChange<Row>) => void; onError?: (error: ViewError) => void },
    onError?: ((error: ViewError) => void) | null,
  ): View<Row>;
}

export function connect(options?: ConnectOptions): Feed;

export const STATUS: Readonly<{ CONNECTING: "connecting"; CONNECTED: "connected"; OFFLINE: "offline"; FALLBACK: "fallback" }>;

/** <0, 0, >0 like a comparator; null when the cursors are from different logs. */
export function compareCursors(a: string, b: string): number | null;
