//! Baton's attribute macros. One so far: [`macro@omit_none`].

use proc_macro::TokenStream;
use quote::{ToTokens, quote};
use syn::{Data, DeriveInput, Fields, Type, parse_macro_input, parse_quote};

/// In a struct that derives serde's traits, every `Option` field is left
/// out of the output when it is `None` and read as `None` when absent: it
/// adds `#[serde(default, skip_serializing_if = "Option::is_none")]` to
/// each `Option` field that does not say otherwise.
///
/// The results file (and every JSON Baton writes from its schema) never
/// holds `null`: an absent figure is an absent key. Writing that on each
/// of some sixty fields hid the fields that do something else. Put it
/// above `#[derive(...)]`, so the derive sees the added attributes.
#[proc_macro_attribute]
pub fn omit_none(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return syn::Error::new_spanned(args, "omit_none takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut input = parse_macro_input!(item as DeriveInput);
    let Data::Struct(data) = &mut input.data else {
        return syn::Error::new_spanned(&input.ident, "omit_none is for structs")
            .to_compile_error()
            .into();
    };
    let Fields::Named(fields) = &mut data.fields else {
        return syn::Error::new_spanned(&input.ident, "omit_none is for structs with named fields")
            .to_compile_error()
            .into();
    };
    for field in &mut fields.named {
        if is_option(&field.ty) && !says_when_to_skip(&field.attrs) {
            field.attrs.push(parse_quote!(
                #[serde(default, skip_serializing_if = "Option::is_none")]
            ));
        }
    }
    quote!(#input).into()
}

/// `Option<T>`, however it is spelled (`std::option::Option<T>` too).
fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

/// A field that already says when it is skipped (`skip`,
/// `skip_serializing`, `skip_serializing_if`) keeps its own rule.
fn says_when_to_skip(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("serde") && a.meta.to_token_stream().to_string().contains("skip")
    })
}
