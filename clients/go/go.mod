// Switchboard's gRPC API for Go, generated from protos/ by `make clients` into gen/ (see
// docs/CLIENTS.md). `go mod tidy` adds the requirements: google.golang.org/grpc,
// google.golang.org/protobuf and google.golang.org/genproto/googleapis/rpc (error details).
module github.com/switchboard-llm/switchboard/clients/go

go 1.19
