// Command pulumi-resource-random serves the bridged Terraform random provider.
package main

import (
	"context"
	_ "embed"

	pf "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"

	"pgplatform.local/engine/random/bridged"
)

//go:embed schema.json
var schema []byte

//go:embed bridge-metadata.json
var metadata []byte

func main() {
	meta := pf.ProviderMetadata{PackageSchema: schema, BridgeMetadata: metadata}
	pf.Main(context.Background(), "random", bridged.Info(metadata), meta)
}
