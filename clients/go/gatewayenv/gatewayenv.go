// Package gatewayenv reads where the gateway is and the caller's API key under the names the
// Python client and the gensearch CLI read, so one shell serves every client:
// GENSEARCH_ADDRESS (host:port, default localhost:50050) and GENSEARCH_API_KEY (sent as
// "authorization: Bearer <key>"; empty where no keys are configured).
//
// The examples' former names, GENSEARCH_ADDR and GENSEARCH_KEY, are still read, with a
// warning on stderr, when the new name is unset: deprecated, they go in the next release.
package gatewayenv

import (
	"fmt"
	"os"
	"regexp"
	"strings"
)

// DefaultAddress is the gateway's port on this machine, as `gensearch up` serves it.
const DefaultAddress = "localhost:50050"

// A URL (scheme://...), as the TypeScript examples accept: no gRPC target for grpc.Dial.
var urlForm = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// Address is the gateway's host:port: GENSEARCH_ADDRESS, else the deprecated GENSEARCH_ADDR,
// else DefaultAddress. A URL is refused by name: grpc.Dial would take it for a host name and
// fail every call Unavailable, saying nothing of the variable; so is a host without a port.
func Address() (string, error) {
	address := os.Getenv("GENSEARCH_ADDRESS")
	if address == "" {
		address = deprecated("GENSEARCH_ADDR", "GENSEARCH_ADDRESS", os.Getenv("GENSEARCH_ADDR"))
	}
	if address == "" {
		return DefaultAddress, nil
	}
	if urlForm.MatchString(address) {
		return "", fmt.Errorf("GENSEARCH_ADDRESS must be host:port (a gRPC target), not a URL: %q", address)
	}
	// A host alone: gRPC dialled port 443 and every call failed Unavailable (the Python
	// client and the gensearch command refuse it too).
	if !strings.Contains(address, ":") {
		return "", fmt.Errorf("GENSEARCH_ADDRESS %q has no port (gRPC would try 443): give host:port, e.g. %q", address, address+":50050")
	}
	return address, nil
}

// APIKey is GENSEARCH_API_KEY, else the deprecated GENSEARCH_KEY, else "" (send none). Set
// but empty, GENSEARCH_API_KEY means no key, as for the Python client: the old name is not read.
func APIKey() string {
	if key, set := os.LookupEnv("GENSEARCH_API_KEY"); set {
		return key
	}
	return deprecated("GENSEARCH_KEY", "GENSEARCH_API_KEY", os.Getenv("GENSEARCH_KEY"))
}

// deprecated returns the value of a former name, saying on stderr which name replaces it.
func deprecated(old, name, value string) string {
	if value != "" {
		fmt.Fprintf(os.Stderr, "gensearch: %s is deprecated and goes in the next release: set %s\n", old, name)
	}
	return value
}
