// Your own embedding key to a collection whose vectorizer URL its admin set (the
// providerkeys package, docs/clients.md#your-own-provider-keys): refused until the call
// names that URL in KeyURLs, then sent there; src/keys.ts in Go, printing the same lines.
// GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in the example; GENSEARCH_COLLECTION (its vectorizer
// at GENSEARCH_EMBEDDING_URL), GENSEARCH_EMBEDDING_KEY: your key.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"gensearch/clients/go/gatewayenv"
	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"
	"gensearch/clients/go/providerkeys"
	"gensearch/clients/go/rpcerror"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

func main() {
	addr, err := gatewayenv.Address()
	check(err)
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	check(err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if key := gatewayenv.APIKey(); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	retrieval := retrievalv1.NewRetrievalServiceClient(conn)
	collection, url := os.Getenv("GENSEARCH_COLLECTION"), os.Getenv("GENSEARCH_EMBEDDING_URL")
	llmKeys := map[string]string{"embedding": os.Getenv("GENSEARCH_EMBEDDING_KEY")}
	properties, err := structpb.NewStruct(map[string]interface{}{"title": "mine"})
	check(err)
	upsert := &retrievalv1.UpsertObjectsRequest{Collection: collection, Objects: []*retrievalv1.DataObject{{Properties: properties}}}

	unconfirmed, err := providerkeys.New(providerkeys.Options{LLMKeys: llmKeys})
	check(err)
	if _, err := retrieval.UpsertObjects(ctx, upsert, grpc.PerRPCCredentials(unconfirmed)); err != nil {
		failure, _ := rpcerror.From(err)
		fmt.Println("unconfirmed", failure.Code, failure.Reason, failure.Field(), failure.Metadata["base_url_field"])
	} else {
		fmt.Println("unconfirmed accepted")
	}

	// On the connection: every call sends the key and its URL.
	keys, err := providerkeys.New(providerkeys.Options{LLMKeys: llmKeys, KeyURLs: providerkeys.KeyURLs{Embedding: url}})
	check(err)
	confirmedConn, err := grpc.Dial(addr, grpc.WithInsecure(), grpc.WithPerRPCCredentials(keys))
	check(err)
	defer confirmedConn.Close()
	confirmed := retrievalv1.NewRetrievalServiceClient(confirmedConn)
	written, err := confirmed.UpsertObjects(ctx, upsert)
	check(err)
	found, err := confirmed.Search(ctx, &retrievalv1.SearchRequest{Collection: collection, Query: &retrievalv1.SearchRequest_NearText{NearText: &retrievalv1.NearText{Text: "mine"}}, Limit: 1})
	check(err)
	fmt.Println("confirmed", len(written.Ids), len(found.Hits))

	for _, bad := range []providerkeys.Options{
		{LLMKeys: map[string]string{"embedding": "sk-\u2026"}},
		{KeyURLs: providerkeys.KeyURLs{Rerank: "http://a\nb"}},
		{LLMKeys: map[string]string{"no such": "k"}},
		{LLMKeys: map[string]string{"OpenAI": "k", "openai": "k"}},
	} {
		if _, err := providerkeys.New(bad); err != nil {
			fmt.Println("refused", strings.SplitN(err.Error(), " ", 2)[0])
		} else {
			fmt.Println("refused none")
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
