!> Maps layer type names to constructors. Built-in types are always known; a program adds its
!> own layer types with `register_layer` (FKB's "custom layers") before loading a model file
!> that uses them.
module colnn_registry
  use colnn_status
  use colnn_layer, only: layer_t
  use colnn_dense, only: dense_t
  use colnn_dropout, only: dropout_t
  use colnn_batchnorm, only: batchnorm_t
  use colnn_normalization, only: normalization_t
  use colnn_activation_layer, only: activation_layer_t
  implicit none
  private

  public :: layer_factory, register_layer, create_layer, is_builtin_type

  abstract interface
    !> Allocates a new, empty layer of the registered type (`allocate(my_layer_t :: layer)`).
    subroutine layer_factory(layer)
      import :: layer_t
      class(layer_t), allocatable, intent(out) :: layer
    end subroutine layer_factory
  end interface

  type :: entry_t
    character(len=:), allocatable :: type_name
    procedure(layer_factory), pointer, nopass :: make => null()
  end type entry_t

  type(entry_t), allocatable, save :: entries(:)
  integer, save :: n_entries = 0

contains

  pure logical function is_builtin_type(type_name)
    character(len=*), intent(in) :: type_name
    select case (type_name)
    case ('dense', 'dropout', 'batch_normalization', 'normalization', 'activation')
      is_builtin_type = .true.
    case default
      is_builtin_type = .false.
    end select
  end function is_builtin_type

  pure logical function valid_type_name(s)
    character(len=*), intent(in) :: s
    integer :: i
    valid_type_name = len(s) > 0 .and. len(s) <= 64
    do i = 1, len(s)
      select case (s(i:i))
      case ('a':'z', '0':'9', '_')
      case default; valid_type_name = .false.
      end select
    end do
  end function valid_type_name

  !> Registers (or re-registers) a user layer type. Built-in names cannot be replaced.
  subroutine register_layer(type_name, factory, stat, errmsg)
    character(len=*), intent(in) :: type_name
    procedure(layer_factory) :: factory
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(entry_t), allocatable :: tmp(:)
    integer :: k
    stat = COLNN_OK
    errmsg = ''
    if (.not. valid_type_name(type_name)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = "register_layer: type name '"//type_name//"' must be 1-64 characters of [a-z0-9_]"
      return
    end if
    if (is_builtin_type(type_name)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = "register_layer: '"//type_name//"' is a built-in layer type"
      return
    end if
    if (.not. allocated(entries)) allocate (entries(8))
    do k = 1, n_entries
      if (entries(k)%type_name == type_name) then
        entries(k)%make => factory
        return
      end if
    end do
    if (n_entries == size(entries)) then
      allocate (tmp(2 * n_entries))
      tmp(1:n_entries) = entries(1:n_entries)
      call move_alloc(tmp, entries)
    end if
    n_entries = n_entries + 1
    entries(n_entries)%type_name = type_name
    entries(n_entries)%make => factory
  end subroutine register_layer

  !> Allocates an empty layer for `type_name`; unknown types are an error (no fallback).
  subroutine create_layer(type_name, layer, stat, errmsg)
    character(len=*), intent(in) :: type_name
    class(layer_t), allocatable, intent(out) :: layer
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    stat = COLNN_OK
    errmsg = ''
    select case (type_name)
    case ('dense'); allocate (dense_t :: layer)
    case ('dropout'); allocate (dropout_t :: layer)
    case ('batch_normalization'); allocate (batchnorm_t :: layer)
    case ('normalization'); allocate (normalization_t :: layer)
    case ('activation'); allocate (activation_layer_t :: layer)
    case default
      do k = 1, n_entries
        if (entries(k)%type_name == type_name) then
          call entries(k)%make(layer)
          if (.not. allocated(layer)) then
            stat = COLNN_ERR_UNSUPPORTED
            errmsg = "the factory registered for layer type '"//type_name//"' returned no layer"
          end if
          return
        end if
      end do
      stat = COLNN_ERR_UNSUPPORTED
      errmsg = "unknown layer type '"//type_name//"' (built in: dense, dropout, "// &
               'batch_normalization, normalization, activation; others must be registered)'
    end select
  end subroutine create_layer
end module colnn_registry
