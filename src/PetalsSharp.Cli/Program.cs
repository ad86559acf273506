using System.CommandLine;
using PetalsSharp.Cli;
using PetalsSharp.Cli.Commands;

var root = new RootCommand("petals: run large language models collaboratively, BitTorrent-style (PetalsSharp).")
{
    DemoCommand.Create(),
    GenerateCommand.Create(),
    InspectCommand.Create(),
    CreateModelCommand.Create(),
    DhtCommand.Create(),
};
return await Cli.InvokeAsync(root, args);
