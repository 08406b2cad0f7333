// The README's main flow through the generated Go client: create a collection, import
// objects, search, generative search, a two-turn conversation, and a rich error read as
// google.rpc.ErrorInfo. GENSEARCH_ADDRESS (host:port, default localhost:50050),
// GENSEARCH_API_KEY (omit when no keys are configured): the names the Python client and
// CLI read (package gatewayenv). Struct properties go in and out as Go maps through
// structpb's own NewStruct and AsMap.
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"gensearch/clients/go/gatewayenv"
	gatewayv1 "gensearch/clients/go/gensearch/gateway/v1"
	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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
	gateway := gatewayv1.NewGatewayServiceClient(conn)

	text, integer := retrievalv1.DataType_DATA_TYPE_TEXT, retrievalv1.DataType_DATA_TYPE_INT
	_, err = retrieval.CreateCollection(ctx, &retrievalv1.CreateCollectionRequest{Collection: &retrievalv1.Collection{
		Name:       "Books",
		Vectorizer: &retrievalv1.Vectorizer{Kind: retrievalv1.VectorizerKind_VECTORIZER_KIND_LOCAL},
		Properties: []*retrievalv1.Property{{Name: "title", DataType: text}, {Name: "body", DataType: text}, {Name: "year", DataType: integer}},
	}})
	check(err)

	books := []map[string]interface{}{
		{"title": "Dune", "body": "A desert planet and the spice melange.", "year": 1965},
		{"title": "Neuromancer", "body": "A hacker in a cyberpunk future.", "year": 1984},
		{"title": "Foundation", "body": "A galactic empire falls.", "year": 1951},
	}
	batch := &retrievalv1.ImportObjectsRequest{Collection: "Books"}
	for _, book := range books {
		properties, err := structpb.NewStruct(book)
		check(err)
		batch.Objects = append(batch.Objects, &retrievalv1.DataObject{Properties: properties})
	}
	stream, err := retrieval.ImportObjects(ctx)
	check(err)
	check(stream.Send(batch))
	imported, err := stream.CloseAndRecv()
	check(err)
	fmt.Println("imported", imported.ImportedCount)

	found, err := retrieval.Search(ctx, &retrievalv1.SearchRequest{
		Collection: "Books", Limit: 3,
		Query: &retrievalv1.SearchRequest_NearText{NearText: &retrievalv1.NearText{Text: "sand and spice"}},
	})
	check(err)
	for _, hit := range found.Hits {
		properties := hit.Properties.AsMap()
		fmt.Println("hit", properties["title"], properties["year"])
	}

	generated, err := gateway.GenerativeSearch(ctx, &gatewayv1.GenerativeSearchRequest{
		Collection: "Books", Limit: 3,
		Query: &gatewayv1.GenerativeSearchRequest_Keyword{Keyword: &retrievalv1.Keyword{Text: "desert hacker empire"}},
		Generate: &gatewayv1.Generate{
			SinglePrompt:      "One-line teaser for {title}: {body}",
			GroupedTask:       "Which is the oldest?",
			GroupedProperties: []string{"title", "year"},
		},
	})
	check(err)
	for _, hit := range generated.Hits {
		fmt.Println("teaser", hit.Hit.Properties.AsMap()["title"], "->", hit.Generation.GetResult())
	}
	fmt.Println("grouped", generated.Grouped.GetResult())

	first, err := gateway.Ask(ctx, &gatewayv1.AskRequest{
		Collection: "Books", LlmQuestion: "Which book is set on a desert planet?", NewConversation: true,
	})
	check(err)
	second, err := gateway.Ask(ctx, &gatewayv1.AskRequest{
		Collection: "Books", LlmQuestion: "When was it written?", ConversationId: first.ConversationId,
	})
	check(err)
	for i, turn := range []*gatewayv1.AskResponse{first, second} {
		fmt.Printf("turn %d %s %q\n", i+1, turn.ConversationId, turn.Answer)
	}

	// A name with a space: INVALID_ARGUMENT, with ErrorInfo and BadRequest details.
	_, err = retrieval.CreateCollection(ctx, &retrievalv1.CreateCollectionRequest{Collection: &retrievalv1.Collection{Name: "my books"}})
	st := status.Convert(err)
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			fmt.Println("error", st.Code(), d.Reason, d.Domain)
		case *errdetails.BadRequest:
			for _, violation := range d.FieldViolations {
				fmt.Println("field", violation.Field)
			}
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
