import BottleneckCLI

runBottleneckCommand()
