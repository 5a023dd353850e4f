// Command tfgen writes the Pulumi schema and bridge metadata the provider embeds.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfgen"

	"pgplatform.local/engine/random/bridged"
)

func main() { tfgen.Main("random", bridged.Info([]byte("{}"))) }
