// Package bridged maps the Terraform random provider onto the Pulumi package "random": one
// module "index", every resource token "random:index/randomX:RandomX", as the published Python
// SDK (pulumi_random) expects.
package bridged

import (
	pf "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	"github.com/terraform-providers/terraform-provider-random/shim"
)

// Version is set by the build (-X) to the pulumi_random version the program pins.
var Version = "0.0.0"

// Info is the bridge's description of the provider; metadata is the generated
// bridge-metadata.json (empty while generating it).
func Info(metadata []byte) tfbridge.ProviderInfo {
	prov := tfbridge.ProviderInfo{
		P:                           pf.ShimProvider(shim.NewProvider()),
		Name:                        "random",
		Version:                     Version,
		MetadataInfo:                tfbridge.NewProviderMetadata(metadata),
		Python:                      &tfbridge.PythonInfo{RespectSchemaVersion: true},
		EnableAccurateBridgePreview: true,
		EnableRawStateDelta:         true,
	}
	makeToken := func(module, name string) (string, error) {
		return tokens.MakeStandard("random")(module, "Random"+name)
	}
	prov.MustComputeTokens(tokens.SingleModule("random_", "index", makeToken))
	prov.MustApplyAutoAliases()
	return prov
}
