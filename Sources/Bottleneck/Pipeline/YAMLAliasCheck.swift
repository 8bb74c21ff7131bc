import CYaml
import BottleneckKernels

/// Refuses YAML anchors and aliases before Yams composes the document. Aliases let a few hundred bytes
/// stand for an exponentially large tree ("billion laughs"); Yams expands them while it composes and
/// compares mapping keys, so such a file hangs even `run --check`. libyaml's event stream names every
/// anchor and alias without expanding any, in time linear in the text. A pipeline has no use for them.
enum YAMLAliasCheck {
    /// Throws `FILE:LINE: …` at the first anchor or alias; syntax errors are left for the composer to report.
    static func refuseAnchorsAndAliases(in text: String, file: String) throws {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw PipelineError("\(file): cannot start the YAML parser") }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        try bytes.withUnsafeBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return }
                defer { yaml_event_delete(&event) }
                let line = event.start_mark.line + 1
                let anchored = switch event.type {
                case YAML_SCALAR_EVENT: event.data.scalar.anchor != nil
                case YAML_SEQUENCE_START_EVENT: event.data.sequence_start.anchor != nil
                case YAML_MAPPING_START_EVENT: event.data.mapping_start.anchor != nil
                default: false
                }
                if event.type == YAML_ALIAS_EVENT || anchored {
                    throw PipelineError("\(file):\(line): YAML anchors and aliases (&name, *name) are not accepted in a "
                                        + "pipeline file; write the value out where it is used")
                }
                if event.type == YAML_STREAM_END_EVENT { return }
            }
        }
    }
}
