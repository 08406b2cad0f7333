// Issue 13's fields through the generated Go client: generation over named objects
// (GenerateOnObjects) with the generation cache, a fallback chain, an Ask retried with its
// request_id, memory's CheckStorage limits, and an ErrorInfo reason. One line per result.
// GENSEARCH_ADDRESS and GENSEARCH_API_KEY as in ../example; GENSEARCH_PRIMARY_MODEL names a model
// that fails (the test's fake LLM answers it 503) and GENSEARCH_BACKUP_PROVIDER the
// provider the chain falls back to (default ollama: not the stack's default pair, which a
// chain may not repeat; with no failing primary the primary answers, fallback index 0).
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"gensearch/clients/go/gatewayenv"
	gatewayv1 "gensearch/clients/go/gensearch/gateway/v1"
	generationv1 "gensearch/clients/go/gensearch/generation/v1"
	memoryv1 "gensearch/clients/go/gensearch/memory/v1"
	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

const collection = "FeaturesGo"

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
	gateway := gatewayv1.NewGatewayServiceClient(conn)
	memory := memoryv1.NewMemoryServiceClient(conn)

	text := retrievalv1.DataType_DATA_TYPE_TEXT
	_, err = retrieval.CreateCollection(ctx, &retrievalv1.CreateCollectionRequest{Collection: &retrievalv1.Collection{
		Name:       collection,
		Vectorizer: &retrievalv1.Vectorizer{Kind: retrievalv1.VectorizerKind_VECTORIZER_KIND_LOCAL},
		Properties: []*retrievalv1.Property{{Name: "title", DataType: text}, {Name: "body", DataType: text}},
	}})
	check(err)
	defer func() {
		_, err := retrieval.DeleteCollection(ctx, &retrievalv1.DeleteCollectionRequest{Name: collection})
		check(err)
	}()
	var objects []*retrievalv1.DataObject
	for _, book := range []map[string]interface{}{
		{"title": "Dune", "body": "A desert planet and the spice melange."},
		{"title": "Solaris", "body": "A living ocean."},
	} {
		properties, err := structpb.NewStruct(book)
		check(err)
		objects = append(objects, &retrievalv1.DataObject{Properties: properties})
	}
	upserted, err := retrieval.UpsertObjects(ctx, &retrievalv1.UpsertObjectsRequest{Collection: collection, Objects: objects})
	check(err)

	// By id, one of them missing (its own NOT_FOUND), twice: the second from the cache.
	ids := append(upserted.Ids, "7e1f1a52-9c0e-4b8b-8d53-41e1d0a4c2aa")
	for _, round := range []string{"first", "again"} {
		named, err := gateway.GenerateOnObjects(ctx, &gatewayv1.GenerateOnObjectsRequest{
			Collection: collection,
			Objects:    &gatewayv1.GenerateOnObjectsRequest_Ids{Ids: &gatewayv1.ObjectIds{Ids: ids}},
			Generate: &gatewayv1.Generate{
				SinglePrompt: "Teaser for {title}",
				Cache:        &gatewayv1.GenerationCache{Mode: gatewayv1.CacheMode_CACHE_MODE_USE, Ttl: durationpb.New(10 * time.Minute)},
			},
		})
		check(err)
		for _, hit := range named.Hits {
			fmt.Println("named", round, hit.Hit.GetId(), hit.Generation.GetCached(), shown(hit.Generation))
		}
	}
	// Inline objects, no collection behind them.
	tea, err := structpb.NewStruct(map[string]interface{}{"name": "tea", "price": 3})
	check(err)
	inline, err := gateway.GenerateOnObjects(ctx, &gatewayv1.GenerateOnObjectsRequest{
		Objects:  &gatewayv1.GenerateOnObjectsRequest_Inline{Inline: &gatewayv1.InlineObjects{Objects: []*structpb.Struct{tea}}},
		Generate: &gatewayv1.Generate{SinglePrompt: "A menu line for {name} at {price} EUR"},
	})
	check(err)
	fmt.Println("inline", shown(inline.Hits[0].Generation))

	// A fallback chain: the primary model fails, the backup provider answers.
	backup := os.Getenv("GENSEARCH_BACKUP_PROVIDER")
	if backup == "" {
		backup = "ollama"
	}
	chained, err := gateway.GenerativeSearch(ctx, &gatewayv1.GenerativeSearchRequest{
		Collection: collection, Limit: 1,
		Query: &gatewayv1.GenerativeSearchRequest_Keyword{Keyword: &retrievalv1.Keyword{Text: "desert"}},
		Generate: &gatewayv1.Generate{
			SinglePrompt: "Summarise {body}", Model: os.Getenv("GENSEARCH_PRIMARY_MODEL"),
			Fallback: []*generationv1.ModelChoice{{Provider: backup}},
		},
	})
	check(err)
	g := chained.Hits[0].Generation
	fmt.Println("fallback", g.GetProvider(), g.GetFallbackIndex(), g.GetUpstreamCalls(), shown(g))

	// An Ask retried with its request_id: the stored turn, replayed, no LLM call.
	ask := func(question string) (*gatewayv1.AskResponse, error) {
		return gateway.Ask(ctx, &gatewayv1.AskRequest{
			Collection: collection, LlmQuestion: question, NewConversation: true,
			RequestId: "0d2c9e4a-7b1f-4e36-a5c8-9f1b3d5e7a20",
		})
	}
	first, err := ask("Which book is set on a desert planet?")
	check(err)
	again, err := ask("Which book is set on a desert planet?")
	check(err)
	fmt.Println("ask", first.Replayed, again.Replayed, first.InteractionId == again.InteractionId,
		first.ConversationId == again.ConversationId, again.UpstreamCalls)
	_, err = ask("Another question")
	st := status.Convert(err)
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			fmt.Println("reused", st.Code(), info.Reason, info.Metadata["field"])
		}
	}

	// What memory accepts in a turn.
	storage, err := memory.CheckStorage(ctx, &memoryv1.CheckStorageRequest{})
	check(err)
	fmt.Println("limits", storage.GetLimits().GetMaxTextBytes(), storage.GetLimits().GetMaxRequestIdBytes())
}

// The result's text, or its error's reason, quoted: one line each.
func shown(g *gatewayv1.GenerationResult) string {
	if g.GetError() != nil {
		return fmt.Sprintf("%q", g.GetError().GetReason())
	}
	return fmt.Sprintf("%q", g.GetResult())
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
