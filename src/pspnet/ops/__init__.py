"""Operations around the domain code: DVC commands, data imports, the tools' environment."""
