fn main() {
    micro::build::compile(&["proto/chat.proto"]).expect("compile proto/chat.proto");
}
