// Package providerkeys sends a caller's own provider keys, as the Python client's llm_keys
// and key_urls do (docs/clients.md#your-own-provider-keys): each key as
// x-<provider>-api-key, and the URL your embedding / rerank key is meant for as
// x-embedding-base-url / x-rerank-base-url (retrieval sends that key to a URL a
// collection's admin set only when the two agree; otherwise PERMISSION_DENIED, reason
// KEY_DESTINATION_UNCONFIRMED).
//
//	keys, err := providerkeys.New(providerkeys.Options{
//		LLMKeys: map[string]string{"embedding": myKey},
//		KeyURLs: providerkeys.KeyURLs{Embedding: "https://embed.example/v1"},
//	})
//	conn, err := grpc.Dial(addr, grpc.WithInsecure(), grpc.WithPerRPCCredentials(keys))
//
// or per call: grpc.PerRPCCredentials(keys).
package providerkeys

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// KeyURLs are the base URLs your embedding and rerank keys are meant for ("" sends none).
type KeyURLs struct {
	Embedding string // x-embedding-base-url
	Rerank    string // x-rerank-base-url
}

// Options are the keys and key URLs to send.
type Options struct {
	// Keys by provider ("openai", "embedding", "rerank", ...), sent as x-<provider>-api-key.
	LLMKeys map[string]string
	KeyURLs KeyURLs
}

// Keys is a grpc.PerRPCCredentials adding the options' metadata to every call, streams
// included. It needs no transport security: the caller chooses TLS on the connection.
type Keys struct {
	metadata map[string]string
}

// The services' provider names (services/common/model_names.py; case is folded): each
// must make a header name.
var provider = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// metadataValue refuses what gRPC metadata cannot carry (printable ASCII only), naming
// the option and never the value (a key), rather than failing each call.
func metadataValue(value, what string) (string, error) {
	for _, r := range value {
		if r < ' ' || r > '~' {
			return "", fmt.Errorf("%s must be printable ASCII (it travels as gRPC metadata): "+
				"check for a pasted character such as '\u2026' or a line break", what)
		}
	}
	return value, nil
}

// New checks the options (an error names a bad one) and returns their credentials.
func New(options Options) (*Keys, error) {
	metadata := map[string]string{}
	for name, key := range options.LLMKeys {
		folded := strings.ToLower(name)
		if !provider.MatchString(folded) {
			return nil, fmt.Errorf("LLMKeys: %q is no provider name (e.g. \"openai\")", name)
		}
		header := "x-" + folded + "-api-key"
		if _, twice := metadata[header]; twice {
			return nil, fmt.Errorf("LLMKeys: %q names a provider twice (case is folded)", name)
		}
		value, err := metadataValue(key, fmt.Sprintf("LLMKeys[%q]", name))
		if err != nil {
			return nil, err
		}
		metadata[header] = value
	}
	for _, url := range []struct{ kind, what, value string }{
		{"embedding", "KeyURLs.Embedding", options.KeyURLs.Embedding},
		{"rerank", "KeyURLs.Rerank", options.KeyURLs.Rerank},
	} {
		if url.value == "" {
			continue
		}
		value, err := metadataValue(url.value, url.what)
		if err != nil {
			return nil, err
		}
		metadata["x-"+url.kind+"-base-url"] = value
	}
	return &Keys{metadata: metadata}, nil
}

// GetRequestMetadata is grpc.PerRPCCredentials': the headers for each call.
func (k *Keys) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	copied := make(map[string]string, len(k.metadata))
	for name, value := range k.metadata {
		copied[name] = value
	}
	return copied, nil
}

// RequireTransportSecurity is grpc.PerRPCCredentials': false, so plaintext connections
// (a local stack) may carry them too.
func (k *Keys) RequireTransportSecurity() bool { return false }
