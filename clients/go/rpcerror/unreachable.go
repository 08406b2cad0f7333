package rpcerror

// What to say when no gateway could be reached: grpc-go's own text for a failed connection
// ("connection error: desc = \"transport: Error while dialing dial tcp 127.0.0.1:50050:
// connect: connection refused\"", or a server that closed at once: "write tcp
// 127.0.0.1:41234->127.0.0.1:50050: write: broken pipe") names neither what to check nor,
// always, the address. The message here says both, as the Python and TypeScript clients do,
// and keeps grpc-go's text at its end.
//
// Only the channel's own failures are reworded: grpc-go (1.33, Debian's) fails a call with
// these texts when its connection attempt failed, and they carry no ErrorInfo (a service's
// UNAVAILABLE always does, and keeps its message). A call cut after connecting reads
// "transport is closing", left as it is.

import (
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	stackUp = "nothing listens there (connection refused): is the stack up (`make run`), " +
		"and are the host and port the gateway's (GENSEARCH_ADDRESS; default port 50050)?"
	noHost  = "its host name does not resolve: check GENSEARCH_ADDRESS"
	noRoute = "no connection to that host: are the host and port the gateway's (GENSEARCH_ADDRESS)?"
	closed  = "something listens there but closed the connection or is no plaintext gRPC " +
		"server: a TLS gateway needs grpc.WithTransportCredentials(...); else check the port " +
		"(another program may hold it)"
	badTLS = "the TLS handshake failed: is the server there a gateway that speaks TLS, and do " +
		"your transport credentials trust its certificate and name that host?"
)

var (
	// A dial that failed ("dial tcp 127.0.0.1:50050: connect: ...", or "dial tcp: lookup
	// gatewy on ...: no such host" before any address): grpc-go wraps it in a ConnectionError.
	dialFailed = regexp.MustCompile(`^connection error: desc = "transport: (?:E|e)rror while dialing:? dial tcp(?: (\S+):)?`)
	// The TCP connection was made, then closed or reset before the server's HTTP/2 preface:
	// grpc-go passes the socket's error as it came ("write tcp <local>-><remote>: ...").
	socketFailed = regexp.MustCompile(`^(?:read|write) tcp \S+->(\S+): `)
	// Setup steps after the dial, in grpc-go's own words.
	setupFailed = regexp.MustCompile(`^connection error: desc = "transport: (?:failed to write|preface mismatch)`)
	tlsFailed   = regexp.MustCompile(`^connection error: desc = "transport: authentication handshake failed`)
)

// unreachable is the message for a status grpc-go made for a connection it could not make to
// address ("" when the caller did not say: then the address grpc-go's text names, if any);
// "" when st is no such status.
func unreachable(st *status.Status, address string) string {
	if st.Code() != codes.Unavailable || len(st.Details()) > 0 {
		return ""
	}
	text := st.Message()
	lowered := strings.ToLower(text)
	var cause, named string
	if match := dialFailed.FindStringSubmatch(text); match != nil {
		named = match[1]
		switch {
		case strings.Contains(lowered, "connection refused"):
			cause = stackUp
		case strings.Contains(lowered, "no such host") || strings.Contains(lowered, "lookup "):
			cause = noHost
		default: // no route, network unreachable, a dial that timed out
			cause = noRoute
		}
	} else if match := socketFailed.FindStringSubmatch(text); match != nil {
		named, cause = match[1], closed
	} else if tlsFailed.MatchString(text) {
		cause = badTLS
	} else if text == "connection closed" || text == "timed out waiting for server handshake" || setupFailed.MatchString(text) {
		cause = closed
	} else {
		return ""
	}
	if address == "" {
		address = named
	}
	where := "the gateway"
	if address != "" {
		where += " at " + address
	}
	return fmt.Sprintf("cannot reach %s: %s (gRPC: %s)", where, cause, text)
}
